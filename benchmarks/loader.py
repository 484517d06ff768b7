"""Loader benchmark: ``WeldingDataset`` against a naive reference path, side by side.

The naive path is what the authors' dataset does (paper-draft section 1): ``librosa.load`` at the
native 192 kHz, ``librosa.resample`` to ``audio_sr``, mel of the whole clip; decode + convert +
resize every video frame before sampling; photos and sensor CSV read the straightforward way. Prints samples/s of each, the speed-up and the maximum
absolute difference of every output.

    python benchmarks/loader.py [--data-root DIR] [--manifest CSV] [--split train] [--samples 16]

Without ``--data-root`` a small synthetic dataset is generated in a temporary folder.

``--store`` instead compares, per method's dataset (the arguments each method opens its splits with,
weldfilm.data.store.method_dataset_arguments; Causal-FiLM with augmentation off and on), the samples/s
of one loader worker (in-process ``dataset[i]``) decoding the files against reading the decoded-input
store (weldfilm/data/store.py), at the default profile's sizes or, with ``--paper``, the paper
profile's (Late Fusion's 192 kHz STFT 8193 x 1024, photos 5 x 224 / 448, 32 frames, ...). The first
pass over the samples is not timed (page cache, librosa); the build rate of each kind is printed too.

    python benchmarks/loader.py --store [--paper] [--samples 12] [--duration-s 12]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from weldfilm.data import readers
from weldfilm.data.dataset import WeldingDataset

MODALITY_KEYS = ("video", "post_weld_images", "audio", "sensor")
PATHS = ("dataset", "naive")


def naive_audio(path, sr: int, audio_type: str, mel_bins: int, num_frames: int, n_fft: int,
                hop_length: int) -> np.ndarray:
    """librosa.load at the native 192 kHz, librosa.resample, librosa mel (or STFT) on the whole clip."""
    import librosa

    native, native_sr = librosa.load(str(path), sr=None, mono=True)
    waveform = librosa.resample(native, orig_sr=native_sr, target_sr=sr)
    if audio_type == "mel":
        spec = librosa.power_to_db(librosa.feature.melspectrogram(y=waveform, sr=sr, n_fft=n_fft,
                                                                  hop_length=hop_length, n_mels=mel_bins))
        pad_value = float(spec.min())
    else:
        spec, pad_value = np.abs(librosa.stft(waveform, n_fft=n_fft, hop_length=hop_length)), 0.0
    return readers.fit_time_axis(spec.astype(np.float32), num_frames, pad_value)[None]


def paper_rgb(bgr: np.ndarray, size: int) -> np.ndarray:
    """The paper's per-frame conversion: BGR->RGB, resize, /255, HWC->CHW."""
    import cv2

    rgb = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (size, size))
    return (rgb.astype(np.float32) / 255.0).transpose(2, 0, 1)


def zero_padded(items: list[np.ndarray], length: int, item_shape: tuple) -> np.ndarray:
    out = np.zeros((length, *item_shape), dtype=np.float32)
    if items:
        out[: len(items)] = np.stack(items[:length])
    return out


def naive_video(path, num_frames: int, frame_size: int) -> np.ndarray:
    """Decode, convert and resize every frame, then sample uniformly."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(paper_rgb(bgr, frame_size))
    capture.release()
    chosen = [frames[i] for i in readers.uniform_indices(len(frames), num_frames)]
    return zero_padded(chosen, num_frames, (3, frame_size, frame_size))


def naive_images(folder, num_angles: int, image_size: int) -> np.ndarray:
    import cv2

    images = [paper_rgb(cv2.imread(str(p)), image_size) for p in readers.list_images(folder)[:num_angles]]
    return zero_padded(images, num_angles, (3, image_size, image_size))


def naive_sensor(path, length: int, channels: int) -> np.ndarray:
    """pandas numeric columns, np.interp per channel, pad/truncate channels, z-score."""
    import pandas as pd

    values = pd.read_csv(path).select_dtypes("number").to_numpy(dtype=np.float64)
    target = np.linspace(0, len(values) - 1, length)
    signal = np.stack([np.interp(target, np.arange(len(values)), values[:, c]) for c in range(values.shape[1])], 1)
    signal = np.pad(signal[:, :channels], [(0, 0), (0, max(0, channels - signal.shape[1]))])
    return ((signal - signal.mean(0)) / (signal.std(0) + readers.ZSCORE_EPS)).astype(np.float32)


def modality_readers(dataset: WeldingDataset, index: int) -> dict[str, dict]:
    """For one sample: modality -> {"dataset": callable, "naive": callable}, each returning an array."""
    s, run = dataset.sizes, dataset.runs[index]
    files = run.files(dataset.data_root)
    spec = dict(audio_type=s["audio_type"], audio_sr=s["audio_sr"], audio_mel_bins=s["audio_mel_bins"],
                audio_frames=s["audio_frames"], n_fft=s["n_fft"], hop_length=s["hop_length"])
    return {
        "video": {"dataset": lambda: readers.read_video(run.subdir, files["avi"], s["video_frames"], s["frame_size"]),
                  "naive": lambda: naive_video(files["avi"], s["video_frames"], s["frame_size"])},
        "post_weld_images": {
            "dataset": lambda: readers.read_images(run.subdir, files["images"], s["num_angles"], s["image_size"], True)[0],
            "naive": lambda: naive_images(files["images"], s["num_angles"], s["image_size"])},
        "audio": {"dataset": lambda: readers.read_audio(run.subdir, files["flac"], **spec),
                  "naive": lambda: naive_audio(files["flac"], s["audio_sr"], s["audio_type"], s["audio_mel_bins"],
                                               s["audio_frames"], s["n_fft"], s["hop_length"])},
        "sensor": {"dataset": lambda: readers.read_sensor(run.subdir, files["csv"], s["sensor_length"], s["sensor_channels"]),
                   "naive": lambda: naive_sensor(files["csv"], s["sensor_length"], s["sensor_channels"])},
    }


def measure(dataset: WeldingDataset, indices: list[int]) -> tuple[dict, dict]:
    """Seconds per path and modality summed over samples, and max |dataset - naive| per modality.

    The two paths run interleaved, sample by sample and modality by modality, in alternating
    order, so that load from other processes on a shared machine hits both alike.
    """
    seconds = {path: dict.fromkeys(MODALITY_KEYS, 0.0) for path in PATHS}
    max_diff = dict.fromkeys(MODALITY_KEYS, 0.0)
    for index in indices:
        for modality, calls in modality_readers(dataset, index).items():
            outputs = {}
            for path in PATHS if index % 2 == 0 else PATHS[::-1]:
                start = time.perf_counter()
                outputs[path] = calls[path]()
                seconds[path][modality] += time.perf_counter() - start
            diff = float(np.abs(outputs["dataset"] - outputs["naive"]).max())
            max_diff[modality] = max(max_diff[modality], diff)
    return seconds, max_diff


def rate(dataset, indices: list[int], passes: int = 2) -> float:
    """Samples/s of one worker reading ``dataset[i]`` in-process (best of ``passes`` timed passes)."""
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        for index in indices:
            dataset[index]
        best = min(best, time.perf_counter() - start)
    return len(indices) / best


def method_datasets(run_cfgs: dict) -> list[tuple[str, dict, dict, bool]]:
    """``(label, run config, dataset arguments, augment)`` of every dataset the methods read on TRAIN."""
    from weldfilm.data import store

    rows = []
    for method, run_cfg in run_cfgs.items():
        for arguments in store.method_dataset_arguments(run_cfg, method):
            label = method if method != "late_fusion" else f"late_fusion.{arguments['modalities'][0]}"
            rows.append((label, run_cfg, arguments, False))
            if method == "causal_film":  # the only method that augments (train.use_augmentations)
                rows.append((label + " +aug", run_cfg, arguments, True))
    return rows


def store_rates(run_cfgs: dict, split: str = "train", samples: int | None = None, build: bool = True) -> list[dict]:
    """Per method's dataset: samples/s of one worker decoding (``decode``) and reading the decoded-input
    store (``store``), and each kind's build rate (``build``, runs/s of one worker). ``run_cfgs``: method ->
    run config (weldfilm.config.run_config) whose manifest exists; missing store files are built first."""
    from weldfilm.data import store
    from weldfilm.data.dataset import dataset_from_config

    built = {}
    rows = []
    for label, run_cfg, arguments, augment in method_datasets(run_cfgs):
        sizes = {k: v for k, v in arguments.items() if k != "modalities"}
        kinds = [store.kind_spec(run_cfg, m, store.resolved_sizes(run_cfg, arguments)) for m in arguments["modalities"]]
        for spec in kinds:
            name = store.kind_name(spec)
            path = store.store_file(run_cfg["results"], name, split)
            if build and name not in built:
                dataset_from_config(run_cfg, split, modalities=(spec["modality"],),
                                    store=False, **spec["sizes"])[0]  # warm-up (librosa import, numba) untimed
                start = time.perf_counter()
                store.build_input_kind(run_cfg, spec, split, path, threads=1)
                built[name] = (store.kind_label(spec), np.load(path, mmap_mode="r").shape[0] / (time.perf_counter() - start),
                               path.stat().st_size / np.load(path, mmap_mode="r").shape[0])
        cfg = {**run_cfg, "train": {**run_cfg["train"], "use_augmentations": augment}}
        stored = dataset_from_config(cfg, split, augment=augment, modalities=arguments["modalities"], **sizes)
        decoded = dataset_from_config(cfg, split, augment=augment, modalities=arguments["modalities"], store=False,
                                      **sizes)
        if set(stored.store) != set(arguments["modalities"]):
            raise SystemExit(f"{label}: the store holds {sorted(stored.store)} of {arguments['modalities']}")
        indices = list(range(min(samples or len(stored), len(stored))))
        rate(decoded, indices, passes=1), rate(stored, indices, passes=1)  # warm-up: page cache, librosa, numba
        decode, from_store = rate(decoded, indices), rate(stored, indices)
        rows.append({"dataset": label, "kinds": [store.kind_label(k) for k in kinds], "decode": decode,
                     "store": from_store, "speed_up": from_store / decode})
    return rows + [{"build": label, "runs_per_s": runs_per_s, "bytes_per_run": size}
                   for label, runs_per_s, size in built.values()]


def store_main(args) -> int:
    """``--store``: the decoding vs store table of every method's dataset (default or paper sizes)."""
    import yaml

    from weldfilm.config import DEFAULT_CONFIG, prepare, run_config
    from weldfilm.data.manifest import build_manifest

    with tempfile.TemporaryDirectory(prefix="weldfilm-bench-store-") as tmp:
        root = Path(args.data_root) if args.data_root else Path(tmp) / "synthetic"
        if not args.data_root:
            from weldfilm.data.synthetic import generate

            generate(root, seed=0, good_runs=max(4, args.samples), runs_per_class=1, duration_s=args.duration_s)
        raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
        raw["profile"] = "paper" if args.paper else "default"
        cfg = prepare(raw)
        cfg = {**cfg, "results": str(Path(tmp) / "results"),
               "data": {**cfg["data"], "source": "real", "root": str(root), "paper_manifest": None,
                        "max_train_good_runs": None, "exclude_runs": []}}
        (Path(tmp) / "results" / "data").mkdir(parents=True)
        build_manifest(root, Path(tmp) / "results" / "data" / "manifest.csv", seed=0, max_train_good=args.samples)
        run_cfgs = {m: run_config(cfg, m, 0, "fair") for m in ("causal_film", "late_fusion", "m3dm", "dinomaly")}
        rows = store_rates(run_cfgs, "train", args.samples)
    table = [r for r in rows if "dataset" in r]
    print(f"loader samples/s of one worker, TRAIN, {'paper' if args.paper else 'default'} profile sizes, "
          f"{args.samples} synthetic TRAIN runs of {args.duration_s:g} s")
    print(f"{'dataset':<20}{'decode':>9}{'store':>10}{'speed-up':>10}  kinds")
    for r in table:
        print(f"{r['dataset']:<20}{r['decode']:>9.1f}{r['store']:>10.1f}{r['speed_up']:>9.1f}x  {', '.join(r['kinds'])}")
    print(f"{'store build (1 worker)':<24}{'runs/s':>10}{'MB a run':>10}")
    for r in rows:
        if "build" in r:
            print(f"{r['build']:<24}{r['runs_per_s']:>10.1f}{r['bytes_per_run'] / 1e6:>10.2f}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="default: generate a small synthetic dataset")
    parser.add_argument("--manifest", default=None, help="default: build one (scan mode) in a temporary folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--duration-s", type=float, default=12.0, help="synthetic weld length when generating")
    parser.add_argument("--store", action="store_true", help="decoding vs the decoded-input store, per method")
    parser.add_argument("--paper", action="store_true", help="with --store: the paper profile's sizes")
    args = parser.parse_args(argv)
    if args.store:
        return store_main(args)
    from weldfilm.data.manifest import build_manifest

    with tempfile.TemporaryDirectory(prefix="weldfilm-bench-") as tmp:
        root = Path(args.data_root) if args.data_root else Path(tmp) / "synthetic"
        if not args.data_root:
            from weldfilm.data.synthetic import generate

            generate(root, seed=0, good_runs=8, runs_per_class=2, duration_s=args.duration_s)
        manifest = args.manifest or build_manifest(root, Path(tmp) / "manifest.csv")
        dataset = WeldingDataset(manifest, root, args.split, allow_missing_images=True)
        indices = list(range(min(args.samples, len(dataset))))
        measure(dataset, indices)  # warm-up: numba compilation, page cache
        seconds, max_diff = measure(dataset, indices)
    n = len(indices)
    print(f"{n} samples of split {args.split}; sizes {dataset.sizes}")
    print(f"{'modality':<18}{'dataset ms':>12}{'naive ms':>12}{'speed-up':>10}{'max |diff|':>12}")
    for modality in MODALITY_KEYS:
        fast, slow = seconds["dataset"][modality] / n * 1e3, seconds["naive"][modality] / n * 1e3
        print(f"{modality:<18}{fast:>12.1f}{slow:>12.1f}{slow / fast:>9.2f}x{max_diff[modality]:>12.3g}")
    total = {path: sum(seconds[path].values()) for path in PATHS}
    print(f"samples/s: dataset {n / total['dataset']:.2f}, naive {n / total['naive']:.2f}, "
          f"speed-up {total['naive'] / total['dataset']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
