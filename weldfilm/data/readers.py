"""One reader per modality of a run (shared/spec/paper-draft.md section 1), each failing loudly.

Every reader takes the run id (for messages) and the file path, and raises
``weldfilm.errors.data_error`` for a missing, empty or corrupt file. Outputs follow the data
contract of docs/ARCHITECTURE.md, as float32 numpy arrays (the dataset turns them into tensors):

- ``read_video``   -> ``(T_v, 3, S, S)`` RGB in [0, 1], uniform frame sampling, zero frames as padding
- ``read_images``  -> ``(N, 3, S, S)`` RGB in [0, 1] zero-padded to ``num_angles``, and the real image count
- ``read_audio``   -> ``(1, n_mels, T_a)`` mel dB, or ``(1, n_fft // 2 + 1, T_a)`` STFT magnitude
- ``read_sensor``  -> ``(T_s, C_s)`` per-channel interpolated and z-scored

Hot-path choices: only the start of the FLAC that the first ``audio_frames`` spectrogram frames
need is decoded (soundfile), then resampled with soxr (what ``librosa.load`` uses, so values
match; measured 5x faster here than ``scipy.signal.resample_poly`` for 192 -> 16 kHz); the STFT
is plain numpy with librosa's framing (librosa, ~3 s CPU to import and JIT, is loaded for mel
only); the mel filter bank is built once; video frames that are not sampled are only grabbed,
never colour-converted or resized; pixels go straight from uint8 into the preallocated float output.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from weldfilm.data.layout import IMAGE_SUFFIXES, NUMERIC_SENSOR_COLUMNS
from weldfilm.errors import data_error

ZSCORE_EPS = 1e-6
RESAMPLE_MARGIN = 2048  # output samples decoded past the last needed one (soxr's filter edge)


def check_file(run_id: str, path: Path, what: str) -> None:
    """Raise if ``path`` is missing or has zero bytes."""
    path = Path(path)
    if not path.is_file():
        raise data_error(run_id, path, f"{what} file is missing", "restore it or list the run in data.exclude_runs")
    if path.stat().st_size == 0:
        raise data_error(run_id, path, f"{what} file is empty (0 bytes)",
                         "restore it or list the run in data.exclude_runs")


def uniform_indices(num_available: int, num_wanted: int) -> np.ndarray:
    """Indices of ``num_wanted`` evenly spaced items out of ``num_available`` (all of them if fewer)."""
    if num_available <= num_wanted:
        return np.arange(num_available)
    return np.linspace(0, num_available - 1, num_wanted).round().astype(int)


def rgb_float_into(bgr: np.ndarray, size: int, out: np.ndarray) -> None:
    """Resize BGR uint8 ``(H, W, 3)`` to ``size`` and write it as RGB into ``out (3, S, S)``.

    A float32 ``out`` gets values in [0, 1]: the same values as BGR->RGB, resize, ``/ 255`` (channel
    swap and resize commute); the division writes straight into the output, without float
    intermediates. A uint8 ``out`` gets the resized RGB pixels themselves (the decoded-input store,
    weldfilm/data/store.py), which ``uint8_to_float`` turns into exactly the float32 values.
    """
    import cv2

    resized = cv2.resize(bgr, (size, size))
    for channel in range(3):
        if out.dtype == np.uint8:
            out[channel] = resized[:, :, 2 - channel]
        else:
            np.divide(resized[:, :, 2 - channel], np.float32(255.0), out=out[channel], dtype=np.float32)


def uint8_to_float(pixels: np.ndarray) -> np.ndarray:
    """RGB uint8 pixels (any shape) as float32 in [0, 1]: the division of ``rgb_float_into``, so bit-identical."""
    out = np.empty(pixels.shape, dtype=np.float32)
    np.divide(pixels, np.float32(255.0), out=out, dtype=np.float32)
    return out


def _count_frames(capture, declared: bool = True) -> int:
    """Frames of an opened capture: the container's count, or grab() to the end (then rewind)."""
    import cv2

    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if declared else 0
    if count > 0:
        return count
    while capture.grab():
        count += 1
    capture.set(cv2.CAP_PROP_POS_FRAMES, 0)  # MJPG/intra-only AVI rewinds exactly
    return count


def _decode_frames(capture, wanted: np.ndarray, out: np.ndarray) -> int:
    """Write the frames at the sorted indices ``wanted`` into ``out``; grab() the ones in between.

    Returns how many were written (fewer when the stream ends early).
    """
    written, position = 0, 0
    for index in wanted:
        while position <= index and capture.grab():
            position += 1
        if position <= index:
            break  # the stream ended before this index
        ok, bgr = capture.retrieve()
        if not ok or bgr is None:
            break
        rgb_float_into(bgr, out.shape[-1], out[written])
        written += 1
    return written


def read_video(run_id: str, path, num_frames: int = 32, frame_size: int = 64, dtype=np.float32) -> np.ndarray:
    """Uniformly sampled RGB frames ``(num_frames, 3, frame_size, frame_size)`` in [0, 1].

    Frames between the sampled ones are grabbed (demuxed) but not converted or resized. When the
    container declares more frames than the stream holds, the real frames are counted and sampled
    again. A video shorter than ``num_frames`` is padded at the end with black frames.
    ``dtype=np.uint8``: the resized RGB pixels (0-255) instead (``uint8_to_float`` gives the float32 frames).
    """
    import cv2

    path = Path(path)
    check_file(run_id, path, "video")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise data_error(run_id, path, "video cannot be opened by OpenCV (corrupt or unknown codec)",
                             "re-export it or list the run in data.exclude_runs")
        video = np.zeros((num_frames, 3, frame_size, frame_size), dtype=dtype)
        wanted = uniform_indices(_count_frames(capture), num_frames)
        written = _decode_frames(capture, wanted, video)
        if written < len(wanted):
            capture.release()
            capture = cv2.VideoCapture(str(path))
            video[:] = 0
            wanted = uniform_indices(_count_frames(capture, declared=False), num_frames)
            written = _decode_frames(capture, wanted, video)
    finally:
        capture.release()
    if written == 0:
        raise data_error(run_id, path, "video holds no decodable frame", "re-export it or list the run in data.exclude_runs")
    return video


def list_images(folder) -> list[Path]:
    """The post-weld photos of a run's images/ folder, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def read_images(run_id: str, folder, num_angles: int = 5, image_size: int = 224,
                allow_missing: bool = False, dtype=np.float32) -> tuple[np.ndarray, int]:
    """Post-weld photos ``(num_angles, 3, image_size, image_size)`` in [0, 1] and the real image count.

    The first ``num_angles`` images by name are used; fewer are padded with zero images. A run
    without any image is an error unless ``allow_missing`` (then all zeros, count 0).
    ``dtype=np.uint8``: the resized RGB pixels (0-255) instead (``uint8_to_float`` gives the float32 photos).
    """
    import cv2

    folder = Path(folder)
    paths = list_images(folder)
    if not paths and not allow_missing:
        raise data_error(run_id, folder, "no post-weld image (*.jpg, *.jpeg, *.png)",
                         "set data.allow_missing_images: true to use such runs, or list it in data.exclude_runs")
    images = np.zeros((num_angles, 3, image_size, image_size), dtype=dtype)
    for slot, path in enumerate(paths[:num_angles]):
        check_file(run_id, path, "image")
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise data_error(run_id, path, "image cannot be decoded (corrupt or not an image)",
                             "replace it or list the run in data.exclude_runs")
        rgb_float_into(bgr, image_size, images[slot])
    return images, min(len(paths), num_angles)


def load_waveform(run_id: str, path, target_sr: int, max_samples: int | None = None) -> np.ndarray:
    """Mono float32 waveform at ``target_sr``: soundfile decode, soxr resampling (librosa's own resampler).

    With ``max_samples`` only the start of the file that those output samples need is decoded
    (plus a margin that makes the resampled samples identical to a full decode). Without it the
    whole file is decoded and a file shorter than its header says is an error.
    """
    import soundfile
    import soxr

    path = Path(path)
    check_file(run_id, path, "audio")
    try:
        info = soundfile.info(str(path))
        frames = info.frames
        if max_samples is not None:
            frames = min(frames, math.ceil((max_samples + RESAMPLE_MARGIN) * info.samplerate / target_sr))
        data, sr = soundfile.read(str(path), frames=frames, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
        raise data_error(run_id, path, f"audio cannot be decoded ({exc})",
                         "restore it or list the run in data.exclude_runs") from exc
    if len(data) == 0:
        raise data_error(run_id, path, "audio holds no samples", "restore it or list the run in data.exclude_runs")
    if len(data) < frames:
        raise data_error(run_id, path, f"audio is truncated: expected {frames} samples, decoded {len(data)}",
                         "restore it or list the run in data.exclude_runs")
    mono = data.mean(axis=1)
    if sr != target_sr:
        mono = soxr.resample(mono, sr, target_sr, quality="HQ").astype(np.float32, copy=False)
    return mono


def fit_time_axis(spec: np.ndarray, num_frames: int, pad_value: float) -> np.ndarray:
    """Crop (keep the start) or pad (with ``pad_value``) the last axis to ``num_frames``."""
    if spec.shape[-1] >= num_frames:
        return spec[..., :num_frames]
    pad = [(0, 0)] * (spec.ndim - 1) + [(0, num_frames - spec.shape[-1])]
    return np.pad(spec, pad, constant_values=pad_value)


@functools.lru_cache(maxsize=8)
def mel_basis(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """librosa's mel filter bank (built once per setting instead of once per call)."""
    import librosa

    return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels)


def samples_needed(num_frames: int, n_fft: int, hop_length: int) -> int:
    """Waveform samples that the first ``num_frames`` centred STFT frames read."""
    return (num_frames - 1) * hop_length + n_fft // 2 + 1


def stft_magnitude(waveform: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """``|librosa.stft(waveform, n_fft, hop_length)|`` ``(n_fft // 2 + 1, frames)`` in plain numpy.

    Same framing as librosa's defaults (centred frames, zero padding of ``n_fft // 2`` on both
    sides, periodic Hann window); values agree to float32 rounding. Avoids importing librosa (and
    compiling its numba kernels, ~3 s CPU per process) on the STFT path.
    """
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"waveform must be 1-D, got shape {waveform.shape}")
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)  # periodic Hann = scipy get_window("hann", n_fft)
    padded = np.pad(waveform, (n_fft // 2, n_fft // 2))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]
    return np.abs(np.fft.rfft(frames * window, axis=1)).T.astype(np.float32)


def audio_features(waveform: np.ndarray, sr: int, audio_type: str = "mel", mel_bins: int = 64,
                   num_frames: int = 256, n_fft: int = 2048, hop_length: int = 512) -> np.ndarray:
    """Mel dB ``(1, mel_bins, num_frames)`` or STFT magnitude ``(1, n_fft // 2 + 1, num_frames)``.

    Mel mode equals ``power_to_db(librosa.feature.melspectrogram(y, sr, n_fft, hop_length,
    n_mels))`` (the paper uses librosa's defaults n_fft 2048 / hop 512), cropped to the first
    ``num_frames`` after the dB conversion (whose 80 dB floor is relative to the loudest frame of
    ``waveform``); a short clip is padded with its own minimum (silence). STFT mode: ``|STFT|``,
    padded with zeros.
    """
    if audio_type not in ("mel", "stft"):
        raise ValueError(f"audio_type must be 'mel' or 'stft', got {audio_type!r}")
    magnitude = stft_magnitude(waveform, n_fft, hop_length)
    if audio_type == "mel":
        import librosa

        spec = librosa.power_to_db(mel_basis(sr, n_fft, mel_bins) @ magnitude**2)
        pad_value = float(spec.min())
    else:
        spec, pad_value = magnitude, 0.0
    return fit_time_axis(spec.astype(np.float32), num_frames, pad_value)[None]


def read_audio(run_id: str, path, audio_type: str = "mel", audio_sr: int = 16000, audio_mel_bins: int = 64,
               audio_frames: int = 256, n_fft: int = 2048, hop_length: int = 512, full_decode: bool = False) -> np.ndarray:
    """The audio tensor of one run: decode, resample, features.

    By default only the start of the recording that the kept frames read is decoded; the values
    equal the paper's (whole recording) except where a kept mel bin lies more than 80 dB below the
    loudest frame of the whole recording that falls past the kept window (``power_to_db``'s floor).
    ``full_decode=True`` decodes everything (paper-exact; validation uses it to find truncation).
    """
    needed = None if full_decode else samples_needed(audio_frames, n_fft, hop_length)
    waveform = load_waveform(run_id, path, audio_sr, needed)
    check_audio_length(run_id, path, waveform, audio_sr, n_fft)
    return audio_features(waveform, audio_sr, audio_type, audio_mel_bins, audio_frames, n_fft, hop_length)


def check_audio_length(run_id: str, path, waveform: np.ndarray, sr: int, n_fft: int) -> None:
    """Raise when the recording is shorter than one STFT window (``n_fft`` samples at ``sr``).

    Such a clip has no complete analysis window: librosa (``center=True``) would only warn and zero-pad it
    into a frame or two that are mostly padding, and crop/pad would make the rest silence. A weld lasts
    seconds, so a recording this short is broken (at Late Fusion's 192 kHz / n_fft 16384 the limit is
    85 ms; at the mel path's 16 kHz / 2048, 128 ms). Longer recordings that are shorter than
    ``audio_frames`` frames are padded as the paper does (see ``audio_features``).
    """
    if len(waveform) < n_fft:
        raise data_error(run_id, path, f"audio is too short: {len(waveform)} samples ({len(waveform) / sr:.3f} s) at "
                         f"{sr} Hz, shorter than one STFT window (n_fft {n_fft} = {n_fft / sr:.3f} s)",
                         "restore the full recording or list the run in data.exclude_runs")


def read_sensor_table(run_id: str, path) -> np.ndarray:
    """The six numeric process channels of a sensor CSV as float64 ``(rows, 6)``.

    Only those columns are parsed (Date/Time/Part No/Remarks are skipped); a missing channel
    column, an empty cell or a non-numeric value is an error naming the columns.
    """
    import pandas as pd

    path = Path(path)
    check_file(run_id, path, "sensor")
    wanted = set(NUMERIC_SENSOR_COLUMNS)
    try:
        table = pd.read_csv(path, usecols=lambda column: str(column).strip() in wanted)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise data_error(run_id, path, f"sensor CSV cannot be parsed ({exc})",
                         "restore it or list the run in data.exclude_runs") from exc
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in NUMERIC_SENSOR_COLUMNS if c not in table.columns]
    if missing:
        raise data_error(run_id, path, f"sensor CSV lacks channel column(s) {missing}",
                         f"expected columns {NUMERIC_SENSOR_COLUMNS}")
    if len(table) == 0:
        raise data_error(run_id, path, "sensor CSV has no data rows", "restore it or list the run in data.exclude_runs")
    kinds = {str(c).strip(): dtype.kind for c, dtype in table.dtypes.items()}
    bad = [c for c in NUMERIC_SENSOR_COLUMNS if kinds[c] not in "iuf"]
    if not bad:
        values = table[NUMERIC_SENSOR_COLUMNS].to_numpy(dtype=np.float64)
        bad = [c for c, empty in zip(NUMERIC_SENSOR_COLUMNS, np.isnan(values).any(axis=0)) if empty]
    if bad:
        raise data_error(run_id, path, f"sensor CSV has empty or non-numeric values in column(s) {bad}",
                         "fix the file or list the run in data.exclude_runs")
    return values


def resample_channels(table: np.ndarray, length: int) -> np.ndarray:
    """Per-channel linear interpolation of ``(rows, C)`` to ``(length, C)``."""
    rows = table.shape[0]
    if rows == 1:
        return np.repeat(table, length, axis=0)
    source = np.arange(rows, dtype=np.float64)
    target = np.linspace(0.0, rows - 1, length)
    return np.stack([np.interp(target, source, table[:, c]) for c in range(table.shape[1])], axis=1)


def zscore_channels(signal: np.ndarray) -> np.ndarray:
    """Per-channel z-score; a constant channel becomes zeros."""
    mean = signal.mean(axis=0, keepdims=True)
    std = signal.std(axis=0, keepdims=True)
    return (signal - mean) / (std + ZSCORE_EPS)


def read_sensor(run_id: str, path, sensor_length: int = 256, sensor_channels: int = 6) -> np.ndarray:
    """Sensor tensor ``(sensor_length, sensor_channels)``: interpolate, pad/truncate channels, z-score."""
    signal = resample_channels(read_sensor_table(run_id, path), sensor_length)
    if signal.shape[1] >= sensor_channels:
        signal = signal[:, :sensor_channels]
    else:
        signal = np.pad(signal, [(0, 0), (0, sensor_channels - signal.shape[1])])
    return zscore_channels(signal).astype(np.float32)
