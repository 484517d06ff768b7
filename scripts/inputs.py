"""Rule inputs: decode one split's inputs of one kind into the decoded-input store."""

from snakemake_job import run_job


def job(cfg, snakemake):
    from weldfilm.data.store import build_input_kind

    # the kind's spec holds its sizes and data settings; cfg gives the results folder (the manifest)
    build_input_kind(cfg, snakemake.params.spec, snakemake.wildcards.split, snakemake.output.data,
                     threads=snakemake.threads)


if __name__ == "__main__":  # not in worker processes that re-import this file (multiprocessing spawn)
    run_job(snakemake, job)  # noqa: F821 (injected by Snakemake)
