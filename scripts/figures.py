"""Rule figures: the paper's figures from the results files."""

from pathlib import Path

from snakemake_job import run_job


def job(cfg, snakemake):
    from weldfilm.paper.figures import build_figures

    build_figures(cfg, cfg["results"], Path(snakemake.output[0]).parent)


if __name__ == "__main__":  # not in worker processes that re-import this file (multiprocessing spawn)
    run_job(snakemake, job)  # noqa: F821 (injected by Snakemake)
