"""Rule tables: the paper's tables from the results files."""

from pathlib import Path

from snakemake_job import run_job


def job(cfg, snakemake):
    from weldfilm.paper.tables import build_tables

    build_tables(cfg, cfg["results"], Path(snakemake.output[0]).parent)


if __name__ == "__main__":  # not in worker processes that re-import this file (multiprocessing spawn)
    run_job(snakemake, job)  # noqa: F821 (injected by Snakemake)
