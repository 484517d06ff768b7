"""Rules train_<method>: train every run of one method and seed (protocols, and for Causal-FiLM the
ablations) with ``weldfilm.runner.train_group``: runs on one TRAIN stream in lockstep, each resuming from
its own last.pt after a kill; with ``workflow.evaluate_in_train_job`` each run is then scored in the same
process."""

from snakemake_job import run_job


def job(cfg, snakemake):
    from weldfilm.runner import train_group

    members = snakemake.params.members
    train_group(cfg, [m["settings"] for m in members], [m["run_dir"] for m in members],
                feature_dirs=[m["feature_dir"] for m in members], eval_splits=list(snakemake.params.eval_splits))


if __name__ == "__main__":  # not in worker processes that re-import this file (multiprocessing spawn)
    run_job(snakemake, job)  # noqa: F821 (injected by Snakemake)
