"""Rules evaluate / evaluate_ablation: score a trained run on each evaluated split."""

from pathlib import Path

from snakemake_job import run_job


def job(cfg, snakemake):
    from weldfilm.evaluation import evaluate_splits

    run_dir = Path(snakemake.params.run_dir)
    splits = list(snakemake.params.splits)
    evaluate_splits(run_dir, splits, {split: run_dir / "eval" / split for split in splits})


if __name__ == "__main__":  # not in worker processes that re-import this file (multiprocessing spawn)
    run_job(snakemake, job)  # noqa: F821 (injected by Snakemake)
