"""Render every planned run into the real on-disk layout, one run folder at a time, atomically."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import soundfile as sf

from weldfilm.data.layout import CLASS_NAMES
from weldfilm.data.synthetic.audio import synthesize_audio
from weldfilm.data.synthetic.images import render_photos
from weldfilm.data.synthetic.plan import RunPlan, plan_runs
from weldfilm.data.synthetic.process import sensor_table, simulate_process
from weldfilm.data.synthetic.video import render_video
from weldfilm.errors import ConfigError, DataError
from weldfilm.io import write_json, write_text

SUMMARY_FILE = "synthetic_summary.json"
SETTINGS_FILE = "process_settings.csv"
TMP_PREFIX = ".synth-tmp-"
MAX_RUNS_PER_CONFIGURATION = 9000  # run numbers stay four digits
JPEG_QUALITY = 92


@dataclass(frozen=True)
class RenderOptions:
    """File formats and sizes of every run."""

    video_size: int = 128
    video_fps: float = 30.0
    image_size: int = 256
    num_angles: int = 5
    audio_sr: int = 192000
    sensor_hz: float = 100.0


def generate(out_dir, seed: int = 0, good_runs: int = 60, runs_per_class: int = 8, duration_s: float = 2.0,
             video_size: int = 128, video_fps: float = 30.0, image_size: int = 256, num_angles: int = 5,
             audio_sr: int = 192000, sensor_hz: float = 100.0, defect_strength: float = 1.0,
             fewer_photos_fraction: float = 0.0, workers: int = 0, overwrite: bool = False) -> dict:
    """Write a synthetic dataset below ``out_dir``; same arguments -> same files.

    Accepts every key of the config's ``synthetic`` section. ``defect_strength`` scales every defect
    signature (1 = the documented ones, bit for bit; 0 = none). ``fewer_photos_fraction`` of the runs
    (chosen by the seed, any class) keep only their first 1 to ``num_angles - 1`` photos, as some real
    runs do; their other files are those of the full run. ``overwrite`` replaces an earlier
    synthetic dataset in ``out_dir`` (one with a ``synthetic_summary.json``); any other non-empty
    folder is refused. Returns a summary: runs per class, configurations, bytes, seconds.
    """
    started = time.perf_counter()
    _check_arguments(good_runs, runs_per_class, duration_s, workers, defect_strength, fewer_photos_fraction)
    options = RenderOptions(int(video_size), float(video_fps), int(image_size), int(num_angles), int(audio_sr),
                            float(sensor_hz))
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    plans = plan_runs(int(seed), int(good_runs), int(runs_per_class), float(duration_s), float(defect_strength))
    photos = photo_counts(int(seed), len(plans), float(fewer_photos_fraction), options.num_angles)
    n_workers = min(4, os.cpu_count() or 1) if workers == 0 else int(workers)
    if n_workers <= 1:
        sizes = [write_run(plan, options, out, n) for plan, n in zip(plans, photos)]
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=context) as pool:
            sizes = list(pool.map(write_run, plans, [options] * len(plans), [out] * len(plans), photos, chunksize=4))
    counts = {CLASS_NAMES[c]: sum(p.configuration.class_code == c for p in plans) for c in CLASS_NAMES}
    summary = {
        "parameters": {"seed": int(seed), "good_runs": int(good_runs), "runs_per_class": int(runs_per_class),
                       "duration_s": float(duration_s), "defect_strength": float(defect_strength),
                       "fewer_photos_fraction": float(fewer_photos_fraction), **options.__dict__},
        "runs": len(plans),
        "counts": counts,
        "configurations": len({p.configuration.folder for p in plans}),
        "fewer_photos": {p.subdir: n for p, n in zip(plans, photos) if n < options.num_angles},
        "bytes": int(sum(sizes)),
    }
    write_text(out / SETTINGS_FILE, settings_table(plans).to_csv(index=False))
    write_json(out / SUMMARY_FILE, summary)  # deterministic: no path, no timing
    return {**summary, "out_dir": str(out), "seconds": round(time.perf_counter() - started, 2)}


def photo_counts(seed: int, n_runs: int, fraction: float, num_angles: int) -> list[int]:
    """Photos written per run: ``num_angles``, except ``round(fraction x n_runs)`` runs (seeded choice)
    that keep 1 to ``num_angles - 1`` (none when a run has a single view)."""
    counts = [num_angles] * n_runs
    n_fewer = int(round(fraction * n_runs)) if num_angles > 1 else 0
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))  # its own stream: the runs stay the same
    for index, kept in zip(rng.choice(n_runs, size=n_fewer, replace=False), rng.integers(1, num_angles, n_fewer)):
        counts[int(index)] = int(kept)
    return counts


def _check_arguments(good_runs, runs_per_class, duration_s, workers, defect_strength=1.0,
                     fewer_photos_fraction=0.0) -> None:
    if good_runs < 4:
        raise ConfigError(f"synthetic.good_runs must be >= 4 (one per good configuration), got {good_runs}")
    if runs_per_class < 1:
        raise ConfigError(f"synthetic.runs_per_class must be >= 1, got {runs_per_class}")
    if max(good_runs / 4, runs_per_class) > MAX_RUNS_PER_CONFIGURATION:
        raise ConfigError(f"synthetic: at most {MAX_RUNS_PER_CONFIGURATION} runs per configuration "
                          "(4 good configurations, 1-2 per defect class); lower good_runs / runs_per_class")
    if duration_s <= 0:
        raise ConfigError(f"synthetic.duration_s must be > 0, got {duration_s}")
    if workers < 0:
        raise ConfigError(f"synthetic.workers must be >= 0, got {workers}")
    if not 0.0 <= defect_strength <= 4.0:
        raise ConfigError(f"synthetic.defect_strength must be in [0, 4], got {defect_strength}")
    if not 0.0 <= fewer_photos_fraction <= 1.0:
        raise ConfigError(f"synthetic.fewer_photos_fraction must be in [0, 1], got {fewer_photos_fraction}")


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a foreign non-empty folder; clear an earlier synthetic dataset if asked to."""
    if out.exists() and not out.is_dir():
        raise DataError(f"synthetic output {out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not (out / SUMMARY_FILE).is_file():
            raise DataError(f"synthetic output {out} is not empty and holds no {SUMMARY_FILE}; "
                            "choose an empty or new folder")
        if not overwrite:
            raise DataError(f"synthetic output {out} already holds a synthetic dataset; "
                            "delete it or pass overwrite (CLI --overwrite)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def settings_table(plans: list[RunPlan]) -> pd.DataFrame:
    """Nominal process settings per run, in the paper manifest's column names (no SPLIT)."""
    per_config = pd.Series([p.configuration.folder for p in plans]).value_counts()
    rows = []
    for p in plans:
        cfg = p.configuration
        rows.append({"CATEGORY": CLASS_NAMES[cfg.class_code], "WELD_TYPE": cfg.weld_type,
                     "THICKNESS_MM": cfg.thickness_mm, "STEEL_TYPE": cfg.steel,
                     "SAMPLES": int(per_config[cfg.folder]), "CURRENT_A": round(cfg.current_a, 1),
                     "VOLTAGE_V": round(cfg.voltage_v, 1), "GAS_BAR": round(cfg.gas_bar, 2),
                     "ROBOT_SPEED_CPM": round(cfg.speed_cpm, 1), "DIRECTORY": cfg.folder, "SUBDIRS": p.subdir,
                     "CLASS_CODE": cfg.class_code})
    return pd.DataFrame(rows)


def render_run(plan: RunPlan, options: RenderOptions) -> dict:
    """The run's contents before encoding: ``table`` (sensor CSV), ``audio`` (float32), ``frames``
    ``(T, H, W, 3)`` and ``photos`` (``num_angles`` images) as uint8 RGB."""
    rng = plan.rng()
    trace = simulate_process(plan, rng)
    table = sensor_table(plan, trace, options.sensor_hz)
    audio = synthesize_audio(plan, trace, options.audio_sr, rng)
    frames = render_video(plan, trace, options.video_size, options.video_fps, rng)
    photos = render_photos(plan, trace, options.image_size, options.num_angles, rng)
    return {"table": table, "audio": audio, "frames": frames, "photos": photos}


def write_run(plan: RunPlan, options: RenderOptions, out: Path, num_photos: int | None = None) -> int:
    """Render one run into a hidden temporary folder and rename it into place; returns its bytes.
    ``num_photos`` < ``num_angles`` writes only the first photos (all views are rendered either way)."""
    rendered = render_run(plan, options)
    table, audio, frames, photos = rendered["table"], rendered["audio"], rendered["frames"], rendered["photos"]
    photos = photos[:num_photos] if num_photos is not None else photos

    config_dir = out / plan.configuration.folder
    config_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{plan.run_id}-", dir=config_dir))
    try:
        table.to_csv(tmp / f"{plan.run_id}.csv", index=False)
        sf.write(tmp / f"{plan.run_id}.flac", audio, options.audio_sr, format="FLAC", subtype="PCM_16")
        _write_avi(tmp / f"{plan.run_id}.avi", frames, options.video_fps, plan.run_id)
        (tmp / "images").mkdir()
        for k, photo in enumerate(photos, start=1):
            path = tmp / "images" / f"{plan.run_id}_{k:02d}.jpg"
            if not cv2.imwrite(str(path), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                raise DataError(f"run {plan.run_id}: {path}: OpenCV could not write the JPEG")
        size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        os.chmod(tmp, 0o755)
        os.replace(tmp, config_dir / plan.run_id)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return size


def _write_avi(path: Path, frames, fps: float, run_id: str) -> None:
    """Motion-JPEG AVI (what OpenCV writes everywhere without extra codecs)."""
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise DataError(f"run {run_id}: {path}: OpenCV cannot open an MJPG VideoWriter (opencv build without "
                        "video writing support?)")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
