"""Rule dataset_card: counts per class and split, and the modality figure."""

from pathlib import Path

from snakemake_job import run_job


def job(cfg, snakemake):
    from weldfilm.data.card import write_dataset_card

    out_dir = Path(snakemake.output.counts_csv).parent
    write_dataset_card(snakemake.input.manifest, snakemake.input.data, out_dir, cfg["preprocess"])


if __name__ == "__main__":  # not in worker processes that re-import this file (multiprocessing spawn)
    run_job(snakemake, job)  # noqa: F821 (injected by Snakemake)
