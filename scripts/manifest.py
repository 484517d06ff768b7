"""Rule manifest: scan the data root (or read the paper's manifest) and write manifest.csv."""

from snakemake_job import run_job


def job(cfg, snakemake):
    from weldfilm.data.manifest import build_manifest

    data = cfg["data"]
    paper_manifest = snakemake.input.paper_manifest[0] if snakemake.input.paper_manifest else None
    build_manifest(snakemake.input.data, snakemake.output[0], paper_manifest, data["split_seed"], data["exclude_runs"],
                   data["max_train_good_runs"])


if __name__ == "__main__":  # not in worker processes that re-import this file (multiprocessing spawn)
    run_job(snakemake, job)  # noqa: F821 (injected by Snakemake)
