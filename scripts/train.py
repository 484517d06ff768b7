"""Rules train / train_ablation: train one run (resuming from its last.pt after a kill) and, when
``workflow.evaluate_in_train_job`` is on, score it on the evaluated splits in the same process."""

from pathlib import Path

from snakemake_job import run_job
from train_resume import resume_allowed


def job(cfg, snakemake):
    from weldfilm.config import run_config
    from weldfilm.run_keys import run_resume_hash
    from weldfilm.runner import build_method, fit_run

    settings = snakemake.params.settings
    run_cfg = run_config(cfg, settings["method"], settings["seed"], settings["protocol"], settings["ablation"])
    run_dir = Path(snakemake.params.run_dir)
    resume = resume_allowed(run_dir, run_resume_hash(run_cfg))  # the rule's config_hash + regenerated data
    print(f"run {run_dir}: {settings}, resume={resume}")
    features = snakemake.input.get("features")
    method = build_method(run_cfg, run_dir, feature_dir=Path(features[0]).parent if features else None)
    fit_run(method, resume=resume)
    splits = list(snakemake.params.eval_splits)
    if splits:
        from weldfilm.evaluation import evaluate_splits

        evaluate_splits(run_dir, splits, {split: run_dir / "eval" / split for split in splits}, method=method)


if __name__ == "__main__":  # not in worker processes that re-import this file (multiprocessing spawn)
    run_job(snakemake, job)  # noqa: F821 (injected by Snakemake)
