"""Rule tiny_backbones: tiny random-init backbones of the paper's model classes."""

from pathlib import Path

from snakemake_job import run_job


def job(cfg, snakemake):
    from weldfilm.models.tiny import write_backbones

    sizes, backbones = cfg["preprocess"], cfg["backbones"]
    out_dir = Path(snakemake.output[0]).parent  # every output is <backbones.dir>/<name> (checked in backbones.smk)
    write_backbones(out_dir, backbones["tiny_size"], backbones["tiny_seed"], frame_size=sizes["frame_size"],
                    video_frames=sizes["video_frames"], image_size=sizes["image_size"],
                    mel_bins=sizes["audio_mel_bins"], audio_frames=sizes["audio_frames"],
                    progress=backbones["tiny_size"] == "paper")


if __name__ == "__main__":  # not in worker processes that re-import this file (multiprocessing spawn)
    run_job(snakemake, job)  # noqa: F821 (injected by Snakemake)
