"""Rule validate: open every file of every run; fail with the list of bad runs."""

from snakemake_job import run_job


def job(cfg, snakemake):
    from weldfilm.config import method_audio_settings
    from weldfilm.data.validate import validate_runs

    validate_runs(snakemake.input.data, snakemake.input.manifest, snakemake.output[0], cfg["preprocess"],
                  cfg["data"]["allow_missing_images"], method_audio_settings(cfg), workers=snakemake.threads)


if __name__ == "__main__":  # not in worker processes that re-import this file (multiprocessing spawn)
    run_job(snakemake, job)  # noqa: F821 (injected by Snakemake)
