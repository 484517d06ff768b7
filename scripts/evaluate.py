"""Rules evaluate / evaluate_ablation: score a trained run on each evaluated split."""

from pathlib import Path

from snakemake_job import run_job


def job(cfg, snakemake):
    from weldfilm.evaluation import evaluate_run

    run_dir = Path(snakemake.params.run_dir)
    for split in snakemake.params.splits:
        evaluate_run(run_dir, split, run_dir / "eval" / split)


if __name__ == "__main__":  # not in worker processes that re-import this file (multiprocessing spawn)
    run_job(snakemake, job)  # noqa: F821 (injected by Snakemake)
