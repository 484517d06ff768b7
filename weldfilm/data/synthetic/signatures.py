"""Measure the simulator's defect signatures back from the written files (tests, docs/synthetic.md).

Each feature reads one modality of one run as a user would (pandas, soundfile, OpenCV) and turns a
documented signature into one number, so that "porosity has no gas" or "burnthrough flashes" can be
checked against the good runs.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import soundfile as sf

from weldfilm.data.layout import RunRef
from weldfilm.errors import data_error


def sensor_features(csv_path: Path) -> dict:
    """Gas flow, current level, voltage instability and how abruptly the current ends."""
    table = pd.read_csv(csv_path)
    current = table["Primary Weld Current"].to_numpy(float)
    voltage = table["Secondary Weld Voltage"].to_numpy(float)
    arc = current > 0.3 * current.max()
    tail = current[int(0.7 * current.size):]
    return {
        "gas_flow_mean": float(table["CO2 Weld Flow"].mean()),
        "current_mean": float(current[arc].mean()),
        "voltage_cv": float(voltage[arc].std() / voltage[arc].mean()),
        "end_drop": float(np.max(-np.diff(tail), initial=0.0) / np.median(current[arc])),
    }


def audio_features(flac_path: Path) -> dict:
    """Level, share of 3-7.5 kHz, impulsiveness of 2.5-7.5 kHz (crackle: kurtosis >> 3) and share
    above 8 kHz (must be ~0) of the sound."""
    sound, sr = sf.read(flac_path, dtype="float64")
    power = np.abs(np.fft.rfft(sound)) ** 2
    freqs = np.fft.rfftfreq(sound.size, 1.0 / sr)
    total = power.sum() + 1e-20
    spectrum = np.fft.rfft(sound)
    spectrum[(freqs < 2500) | (freqs > 7500)] = 0
    band = np.fft.irfft(spectrum, sound.size)  # 2.5-7.5 kHz, where the crackle ticks ring
    return {
        "audio_rms": float(np.sqrt(np.mean(sound ** 2))),
        "audio_high_share": float(power[(freqs >= 3000) & (freqs < 7500)].sum() / power[freqs < 7500].sum()),
        "audio_above_8k_share": float(power[freqs >= 8000].sum() / total),
        "audio_crackle": float(_kurtosis(band)),
    }


def _kurtosis(x: np.ndarray) -> float:
    x = x - x.mean()
    return float(np.mean(x ** 4) / (np.mean(x ** 2) ** 2 + 1e-30))


def video_features(avi_path: Path, run_id: str = "?") -> dict:
    """Mean brightness, its peak over the median (flashes) and the frame-to-frame flicker."""
    capture = cv2.VideoCapture(str(avi_path))
    means = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        means.append(frame.mean())
    capture.release()
    if not means:
        raise data_error(run_id, avi_path, "no frame could be decoded")
    means = np.asarray(means)
    lit = means[means > 0.5 * np.median(means)]
    return {
        "video_brightness": float(np.median(means)),
        "video_peak_ratio": float(means.max() / np.median(means)),
        "video_flicker": float(np.std(np.diff(lit)) / np.mean(lit)),
    }


def image_features(image_path: Path) -> dict:
    """Local marks of the first photo: near-black pixels on the plate, sharp detail away from the
    bead (droplets) and how far the bead line bends (warping)."""
    gray = cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE).astype(np.float64)
    size = gray.shape[0]
    plate = gray[int(0.25 * size):int(0.75 * size), int(0.1 * size):int(0.9 * size)]
    ripples = np.abs(np.diff(gray, axis=1))[:, :-1]
    ripples = cv2.blur(ripples, (max(3, size // 16), 3))
    rows = np.arange(size)[:, None]
    centre = []
    for lo in (0.15, 0.45, 0.75):  # bead centre line in three column bands (ripple-energy centroid)
        band = ripples[int(0.15 * size):int(0.85 * size), int(lo * size):int((lo + 0.1) * size)] ** 2
        centre.append(float((band * rows[int(0.15 * size):int(0.85 * size)]).sum() / (band.sum() + 1e-9)))
    detail = np.abs(cv2.Laplacian(gray, cv2.CV_64F, ksize=3))
    off_bead = np.concatenate([detail[int(0.12 * size):int(0.32 * size)], detail[int(0.68 * size):int(0.88 * size)]])
    return {
        "image_dark_share": float((plate < 30).mean()),
        "image_bend": float((abs(centre[1] - 0.5 * (centre[0] + centre[2]))) / size),
        "image_off_bead_detail": float(off_bead.mean()),
    }


def run_features(data_root, run: RunRef) -> dict:
    """All features of one run (first photo for the image features)."""
    files = run.files(data_root)
    photos = sorted(files["images"].glob("*.jpg"))
    if not photos:
        raise data_error(run.run_id, files["images"], "no photo")
    return {"sample_id": run.subdir, "class_name": run.class_name, **sensor_features(files["csv"]),
            **audio_features(files["flac"]), **video_features(files["avi"], run.run_id), **image_features(photos[0])}
