"""Rule inputs: decode every split's inputs of one kind into the decoded-input store."""

from snakemake_job import run_job


def job(cfg, snakemake):
    from weldfilm.data.store import build_input_splits

    # the kind's spec holds its sizes and data settings; one .npy output per split (named by the split)
    outputs = {split: snakemake.output[split] for split in snakemake.params.splits}
    build_input_splits(cfg, snakemake.params.spec, outputs, threads=snakemake.threads,
                       manifest=snakemake.input.manifest)


if __name__ == "__main__":  # not in worker processes that re-import this file (multiprocessing spawn)
    run_job(snakemake, job)  # noqa: F821 (injected by Snakemake)
