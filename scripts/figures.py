"""Rule figures: the paper's figures from the results files."""

from pathlib import Path

from snakemake_job import run_job


def job(cfg, snakemake):
    from weldfilm.paper.figures import build_figures
    from weldfilm.paths import results_of_card_file

    # the runs are read below the results folder the rule's inputs lie in
    build_figures(cfg, results_of_card_file(snakemake.input.card), Path(snakemake.output[0]).parent)


if __name__ == "__main__":  # not in worker processes that re-import this file (multiprocessing spawn)
    run_job(snakemake, job)  # noqa: F821 (injected by Snakemake)
