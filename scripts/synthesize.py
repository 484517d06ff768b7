"""Rule synthesize: write the synthetic dataset (real on-disk layout) to data.root."""

from snakemake_job import run_job


def job(cfg, snakemake):
    from weldfilm.data.synthetic import generate_from_config

    # overwrite only ever replaces an earlier synthetic dataset (the generator refuses other folders)
    generate_from_config(cfg, snakemake.output[0], overwrite=True)


if __name__ == "__main__":  # not in worker processes that re-import this file (multiprocessing spawn)
    run_job(snakemake, job)  # noqa: F821 (injected by Snakemake)
