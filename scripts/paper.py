"""Rule paper: render the paper around the tables and figures."""

from pathlib import Path

from snakemake_job import run_job


def job(cfg, snakemake):
    from weldfilm.paper.render import render_paper
    from weldfilm.paths import results_of_paper_dir

    out_dir = Path(snakemake.output[0]).parent  # <results>/paper, holding the tables and figures
    render_paper(cfg, Path(snakemake.input.source).parent, results_of_paper_dir(out_dir), out_dir)


if __name__ == "__main__":  # not in worker processes that re-import this file (multiprocessing spawn)
    run_job(snakemake, job)  # noqa: F821 (injected by Snakemake)
