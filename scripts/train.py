"""Rules train / train_ablation: train one run; resume from its last.pt after a kill."""

from pathlib import Path

from snakemake_job import run_job
from train_resume import resume_allowed


def job(cfg, snakemake):
    from weldfilm.config import run_config
    from weldfilm.runner import train_run

    settings = snakemake.params.settings
    run_cfg = run_config(cfg, settings["method"], settings["seed"], settings["protocol"], settings["ablation"])
    run_dir = Path(snakemake.params.run_dir)
    resume = resume_allowed(run_dir, snakemake.params.config_hash)
    print(f"run {run_dir}: {settings}, resume={resume}")
    features = snakemake.input.get("features")
    feature_dir = Path(features[0]).parent if features else None
    train_run(run_cfg, run_dir, resume=resume, feature_dir=feature_dir)


if __name__ == "__main__":  # not in worker processes that re-import this file (multiprocessing spawn)
    run_job(snakemake, job)  # noqa: F821 (injected by Snakemake)
