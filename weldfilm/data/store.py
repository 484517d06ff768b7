"""The decoded-input store: each split's decoded, resized inputs written once, read memory-mapped (imports no torch).

A *kind* is one modality at one set of preprocessing sizes on one data set, e.g. video at 32 frames x
64 px, photos at 5 views x 224 px (Causal-FiLM) or at 448 px (Dinomaly), mel or Late Fusion's STFT,
the sensor. Its name is a readable label plus a hash of ``kind_spec`` (the modality, the sizes its
reader uses and ``weldfilm.paths.data_identity``: data root, manifest settings, exclusions,
missing images, synthetic generator settings). One file per kind and split:
``<results>/inputs/<kind>/<split>.npy`` (``store_file``, written row by row: ``RowFile``), rows in manifest order, and a JSON sidecar
``<split>.json`` (key, sample ids, ``num_images`` for photos, shape, dtype, a digest of the data file:
sha256 of its size, first and last MiB) written after the data file is in place.

Video frames and photos are stored as the resized RGB uint8 pixels and turned into float32 / 255 on
read with the very division of ``readers.rgb_float_into`` (``readers.uint8_to_float``): the values
are bit-identical to decoding. Mel, STFT and sensor arrays are stored as the float32 the readers give.

Which kinds a run reads is a function of its run config (``run_input_kinds``; the feature-cache builds
of Causal-FiLM: ``feature_input_kinds``), made from the same per-method dataset arguments the methods
open their datasets with (``method_dataset_arguments``): one place per fact. ``WeldingDataset`` reads
a kind from the store when ``dataset_from_config`` found it current (``open_store``), else decodes.
The workflow's rule ``inputs`` builds the files (``build_input_kind``, a CPU job), so that no GPU job
decodes FLAC, AVI or photos.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from weldfilm.errors import ConfigError, DataError, WeldfilmError
from weldfilm.methods import FEATURE_CACHE_METHODS
from weldfilm.paths import CAUSAL_FILM_MODALITIES, cached_splits, data_identity, file_digest
from weldfilm.io import stable_hash

FORMAT_VERSION = 2  # 2: sidecars identify the data file by a digest (1: by mtime, which Snakemake resets)
SPLITS = ("train", "val", "test")
# WeldingDataset's preprocessing arguments (dataset_from_config takes them from ``preprocess`` or overrides)
PREPROCESS_KEYS = ("video_frames", "frame_size", "image_size", "num_angles", "audio_type", "audio_sr",
                   "audio_mel_bins", "audio_frames", "n_fft", "hop_length", "sensor_length", "sensor_channels")
# the sizes each modality's reader uses (WeldingDataset.read_arrays)
MODALITY_SIZES = {
    "video": ("video_frames", "frame_size"),
    "post_weld_images": ("num_angles", "image_size"),
    "audio": ("audio_type", "audio_sr", "audio_mel_bins", "audio_frames", "n_fft", "hop_length"),
    "sensor": ("sensor_length", "sensor_channels"),
}
PIXEL_MODALITIES = ("video", "post_weld_images")  # stored as uint8 RGB
LATE_FUSION_BRANCHES = ("audio", "video")
log = logging.getLogger(__name__)
_warned: set = set()


# ------------------------------------------------------------------------------ what each method reads
def late_fusion_arguments(cfg: dict, branch: str) -> dict:
    """Dataset arguments of one Late Fusion branch: STFT audio at its rate and window, or its video frames."""
    s = cfg["late_fusion"]
    return {"modalities": (branch,), "audio_type": "stft", "audio_sr": s["audio_sr"], "n_fft": s["n_fft"],
            "hop_length": s["hop_length"], "audio_frames": s["audio_frames"], "video_frames": s["video_frames"],
            "frame_size": s["frame_size"]}


def m3dm_arguments(cfg: dict) -> dict:
    """Dataset arguments of M3DM: the first photo at ``m3dm.image_size`` (the sensor is read raw, as a cloud)."""
    return {"modalities": ("post_weld_images",), "num_angles": 1, "image_size": cfg["m3dm"]["image_size"]}


def dinomaly_arguments(cfg: dict) -> dict:
    """Dataset arguments of Dinomaly: every photo at ``dinomaly.resize``."""
    return {"modalities": ("post_weld_images",), "image_size": cfg["dinomaly"]["resize"]}


def method_dataset_arguments(cfg: dict, method: str | None = None) -> list[dict]:
    """Every ``dataset_from_config`` argument set (``modalities`` + size overrides) a run of ``method``
    (default: the run config's) opens its splits with. The methods call the functions above themselves."""
    method = method or (cfg.get("run") or {}).get("method")
    if method == "causal_film":
        return [{"modalities": CAUSAL_FILM_MODALITIES}]
    if method == "late_fusion":
        return [late_fusion_arguments(cfg, branch) for branch in LATE_FUSION_BRANCHES]
    if method == "m3dm":
        return [m3dm_arguments(cfg)]
    if method == "dinomaly":
        return [dinomaly_arguments(cfg)]
    raise ConfigError(f"unknown method {method!r}: the decoded-input store does not know what it reads")


def resolved_sizes(cfg: dict, arguments: dict) -> dict:
    """``preprocess`` with the size overrides of ``arguments`` (what WeldingDataset.sizes will be)."""
    sizes = {key: cfg["preprocess"][key] for key in PREPROCESS_KEYS if key in cfg["preprocess"]}
    sizes.update({k: v for k, v in arguments.items() if k in PREPROCESS_KEYS})
    return sizes


# ------------------------------------------------------------------------------ kinds, names, files
def kind_spec(cfg: dict, modality: str, sizes: dict) -> dict:
    """What one kind's arrays depend on: the modality, the sizes its reader uses, the data set."""
    if modality not in MODALITY_SIZES:
        raise ConfigError(f"unknown modality {modality!r}; known: {list(MODALITY_SIZES)}")
    keys = MODALITY_SIZES[modality]
    if modality == "audio" and sizes["audio_type"] == "stft":
        keys = tuple(k for k in keys if k != "audio_mel_bins")  # the STFT does not read it
    return {"format": FORMAT_VERSION, "modality": modality, "sizes": {k: sizes[k] for k in keys},
            **data_identity(cfg)}


def kind_label(spec: dict) -> str:
    """The readable part of a kind's name, e.g. ``video_32x64``, ``photos_5x224``, ``stft_8193x1024``."""
    s, modality = spec["sizes"], spec["modality"]
    if modality == "video":
        return f"video_{s['video_frames']}x{s['frame_size']}"
    if modality == "post_weld_images":
        return f"photos_{s['num_angles']}x{s['image_size']}"
    if modality == "audio" and s["audio_type"] == "stft":
        return f"stft_{s['n_fft'] // 2 + 1}x{s['audio_frames']}_{s['audio_sr'] // 1000}k"
    if modality == "audio":
        return f"mel_{s['audio_mel_bins']}x{s['audio_frames']}_{s['audio_sr'] // 1000}k"
    return f"sensor_{s['sensor_length']}x{s['sensor_channels']}"


def kind_name(spec: dict) -> str:
    """Folder name of a kind: label + a hash of the whole spec (two data sets never share one)."""
    return f"{kind_label(spec)}-{stable_hash(spec, length=10)}"


def kind_key(spec: dict) -> str:
    """The key a kind's sidecar must carry."""
    return stable_hash(spec, length=20)


def store_file(results, kind: str, split: str) -> Path:
    """``<results>/inputs/<kind>/<split>.npy``: ``weldfilm.paths.input_store_file`` (the workflow fills in
    wildcards with the same function)."""
    from weldfilm.paths import input_store_file

    return input_store_file(results, kind, split)


def sidecar_file(path) -> Path:
    return Path(path).with_suffix(".json")


def store_enabled(cfg: dict) -> bool:
    return bool((cfg.get("inputs") or {}).get("store", False))


# ------------------------------------------------------------------------------ what a run reads
def _kinds_of(cfg: dict, argument_sets: list[dict]) -> list[dict]:
    specs = []
    for arguments in argument_sets:
        sizes = resolved_sizes(cfg, arguments)
        for modality in arguments.get("modalities") or MODALITY_SIZES:
            spec = kind_spec(cfg, modality, sizes)
            if spec not in specs:
                specs.append(spec)
    return specs


def method_kinds(run_cfg: dict, method: str | None = None) -> list[dict]:
    """Every kind spec the datasets of ``method`` (default: the run's) read, whatever the split."""
    return _kinds_of(run_cfg, method_dataset_arguments(run_cfg, method))


def run_input_kinds(run_cfg: dict) -> dict[str, list[dict]]:
    """``{split: [kind specs]}`` the run's own job (train / evaluate) reads from the store.

    Every split for the baselines; for Causal-FiLM the splits it does not read from the feature cache
    (an augmented TRAIN: augmented afresh each epoch from the stored arrays). {} when ``inputs.store`` is off.
    """
    if not store_enabled(run_cfg):
        return {}
    method = run_cfg["run"]["method"]
    splits = tuple(s for s in SPLITS if s not in cached_splits(run_cfg))  # () for a method without a feature cache
    kinds = _kinds_of(run_cfg, method_dataset_arguments(run_cfg, method))
    return {split: list(kinds) for split in splits}


def feature_input_kinds(run_cfg: dict, splits=None) -> dict[str, list[dict]]:
    """``{split: [kind specs]}`` the Causal-FiLM feature-cache builds of this run config read (``splits``:
    default the ones it reads from the cache, ``weldfilm.paths.cached_splits``)."""
    method = run_cfg["run"]["method"]
    if not store_enabled(run_cfg) or method not in FEATURE_CACHE_METHODS:
        return {}
    kinds = _kinds_of(run_cfg, method_dataset_arguments(run_cfg, method))
    return {split: list(kinds) for split in (cached_splits(run_cfg) if splits is None else splits)}


def store_files(results, kinds_by_split: dict[str, list[dict]]) -> list[str]:
    """The data files of ``{split: [specs]}`` (what a job's rule lists as its inputs)."""
    return [str(store_file(results, kind_name(spec), split))
            for split, specs in kinds_by_split.items() for spec in specs]


# ------------------------------------------------------------------------------ reading
class StoredKind:
    """One current kind file of one split, memory-mapped on first use in each process (DataLoader workers
    open their own); ``row(i)`` is run ``i`` of the split as the reader would return it."""

    def __init__(self, path, sidecar: dict):
        self.path = Path(path)
        self.modality = sidecar["modality"]
        self.num_images = sidecar.get("num_images")
        self._array = None
        self._pid = None

    def __getstate__(self):
        return {**self.__dict__, "_array": None, "_pid": None}

    def array(self) -> np.ndarray:
        if self._array is None or self._pid != os.getpid():
            self._array = np.load(self.path, mmap_mode="r")
            self._pid = os.getpid()
        return self._array

    def read(self, index: int, out: dict) -> None:
        """Put run ``index``'s arrays (float32, as decoding gives them) into ``out``."""
        from weldfilm.data.readers import uint8_to_float

        row = self.array()[index]
        if self.modality in PIXEL_MODALITIES:
            out[self.modality] = uint8_to_float(row)
            if self.modality == "post_weld_images":
                out["num_images"] = int(self.num_images[index])
        else:
            out[self.modality] = np.array(row, dtype=np.float32)


def _read_sidecar(path: Path) -> dict | None:
    import json

    try:
        return json.loads(sidecar_file(path).read_text())
    except (OSError, ValueError):
        return None


def stale_reason(path, spec: dict, sample_ids: list[str]) -> str | None:
    """None when the kind file at ``path`` is current for ``spec`` and the split's ``sample_ids``, else why not."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    sidecar = _read_sidecar(path)
    if sidecar is None:
        return "no readable sidecar"
    if sidecar.get("key") != kind_key(spec):
        return "its key does not match the config (other sizes or data)"
    if sidecar.get("data_digest") != file_digest(path):
        return "the data file is not the one its sidecar describes (a build was interrupted)"
    if sidecar.get("sample_ids") != list(sample_ids):
        return "its runs are not the split's runs (the manifest changed)"
    return None


def open_store(cfg: dict, split: str, modalities, sizes: dict, sample_ids: list[str]) -> dict[str, StoredKind]:
    """``{modality: StoredKind}`` of the current kind files of a dataset; missing ones are left to decoding,
    stale ones too (said once per file in the log). {} when ``inputs.store`` is off."""
    if not store_enabled(cfg):
        return {}
    out = {}
    for modality in modalities:
        spec = kind_spec(cfg, modality, sizes)
        path = store_file(cfg["results"], kind_name(spec), split)
        reason = stale_reason(path, spec, sample_ids)
        if reason is None:
            out[modality] = StoredKind(path, _read_sidecar(path))
            if ("read", str(path)) not in _warned:
                _warned.add(("read", str(path)))
                log.info("reading %s of %s from the decoded-input store %s", modality, split.upper(), path)
        elif reason != "missing" and str(path) not in _warned:
            _warned.add(str(path))
            log.warning("decoded-input store %s is stale (%s): decoding %s of %s from the files instead "
                        "(rebuild it with the workflow's `inputs` rule)", path, reason, modality, split.upper())
    return out


# ------------------------------------------------------------------------------ building
# Memory of a build (build_mem_mb), measured 2026-12-02 (2-core CPU; peak RSS, getrusage, of build_input_kind
# on synthetic runs whose FLACs were 45 s at 192 kHz): the main process with torch ~260-370 MB; decoding the
# paper's STFT kind (8.4 M samples, 1024 x 16384 frames, complex rfft) adds ~320-430 MB in the process that
# decodes (in-process: 788 MB peak for 6 runs, 795 MB for 28: rows are streamed to the file, so the split
# size adds nothing; 2 workers: main 298 MB, largest worker 580 MB); photos and video add little. Rows in
# flight: 2 prefetched per worker + 2 in the main process. (python benchmarks/store_memory.py 1 stft 8 / 40)
BUILD_BASE_MB = 400
BUILD_WORKER_MB = {"audio": 400}  # per decoding process; other modalities: BUILD_WORKER_MB_OTHER
BUILD_WORKER_MB_OTHER = 100
BUILD_MEMORY_MARGIN = 2.0


def row_bytes(spec: dict) -> int:
    """Bytes of one run's stored array of a kind."""
    s, modality = spec["sizes"], spec["modality"]
    if modality == "video":
        return s["video_frames"] * 3 * s["frame_size"] ** 2
    if modality == "post_weld_images":
        return s["num_angles"] * 3 * s["image_size"] ** 2
    if modality == "audio":
        bins = s["n_fft"] // 2 + 1 if s["audio_type"] == "stft" else s["audio_mel_bins"]
        return 4 * bins * s["audio_frames"]
    return 4 * s["sensor_length"] * s["sensor_channels"]


def build_mem_mb(spec: dict, threads: int) -> int:
    """``mem_mb`` of the job that builds one kind's split with ``threads`` (= decoding workers; 1 = in-process)."""
    workers = int(threads) if int(threads) > 1 else 1
    rows = 2 * workers + 2
    per_worker = BUILD_WORKER_MB.get(spec["modality"], BUILD_WORKER_MB_OTHER)
    peak = BUILD_BASE_MB + per_worker * workers + rows * row_bytes(spec) / 2**20
    return int(math.ceil(BUILD_MEMORY_MARGIN * peak / 100.0)) * 100


def _identity(item):
    return item


class RowFile:
    """A ``.npy`` file of ``num_rows`` rows written row after row with plain file writes (the header from the
    first row). Unlike a memory map (``npy_store.NpyWriter``, whose written pages stay in the process's
    resident memory: 1.2 GB of RSS for a 1.2 GB file, measured), written pages stay in the page cache, so a
    build's RSS does not grow with the split (the paper's STFT TRAIN split is ~19 GB)."""

    def __init__(self, path, num_rows: int):
        self.path, self.num_rows, self.rows = Path(path), num_rows, 0
        self.handle = None
        self.row_shape = self.dtype = None

    def write(self, row: np.ndarray) -> None:
        if self.handle is None:
            self.row_shape, self.dtype = row.shape, row.dtype
            self.handle = open(self.path, "wb")
            header = {"descr": np.lib.format.dtype_to_descr(row.dtype), "fortran_order": False,
                      "shape": (self.num_rows, *row.shape)}
            np.lib.format.write_array_header_1_0(self.handle, header)
        if row.shape != self.row_shape or row.dtype != self.dtype:
            raise ConfigError(f"{self.path}: row {self.rows} is {row.shape} {row.dtype}, the first was "
                              f"{self.row_shape} {self.dtype} (inputs of one kind must have one shape)")
        self.handle.write(memoryview(np.ascontiguousarray(row)).cast("B"))
        self.rows += 1

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()

    def check_complete(self) -> None:
        if self.rows != self.num_rows:
            raise RuntimeError(f"{self.path}: {self.rows} of {self.num_rows} rows written")


class _StoredArrays:
    """Run ``i``'s arrays of one kind as stored (uint8 pixels), or the data error that stopped it; ``tensors``:
    the data as a torch tensor (from DataLoader workers: shared memory instead of a pickled copy)."""

    def __init__(self, dataset, modality: str, tensors: bool = False):
        self.dataset, self.modality, self.tensors = dataset, modality, tensors

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            arrays = self.dataset.decode_arrays(index, uint8=True)
        except WeldfilmError as exc:  # the reader's own message (run, file, what to do), not a worker traceback
            return {"error": str(exc)}
        item = {"data": np.ascontiguousarray(arrays[self.modality])}
        if self.tensors:
            import torch

            item["data"] = torch.from_numpy(item["data"])
        if "num_images" in arrays:
            item["num_images"] = int(arrays["num_images"])
        return item


def config_for_kind(cfg: dict, spec: dict) -> dict:
    """``cfg`` with the data settings of ``spec`` (a kind is built from its spec alone: its sizes and data
    identity are everything the reader reads; ``cfg`` gives the results folder and so the manifest)."""
    out = {**cfg, "data": {**cfg["data"], **spec["data"]}}
    if "synthetic" in spec:
        out["synthetic"] = {**cfg.get("synthetic", {}), **spec["synthetic"]}
    return out


def build_input_splits(cfg: dict, spec: dict, out_paths: dict, threads: int = 1, manifest=None) -> list[Path]:
    """Build one kind for several splits (``{split: .npy path}``), one after another in this process: the job
    of rule ``inputs`` (one per kind, so that each job's start-up serves every split)."""
    return [build_input_kind(cfg, spec, split, path, threads=threads, manifest=manifest)
            for split, path in out_paths.items()]


def build_input_kind(cfg: dict, spec: dict, split: str, out_path, threads: int = 1, manifest=None) -> Path:
    """Decode every run of ``split`` for one kind and write ``out_path`` (.npy) and its sidecar, atomically.

    The data settings come from ``spec`` (``config_for_kind``), the manifest from ``manifest`` (default: the
    one below ``cfg``'s results). Decoding runs in-process for ``threads`` <= 1 (no torch imported) or in a
    torch DataLoader with ``threads`` worker processes; a bad file stops the build with the reader's DataError
    (run, file, what to do). The sidecar is written after the data file.
    """
    from weldfilm.data.dataset import dataset_from_config
    from weldfilm.io import atomic_path, write_json
    from weldfilm.training.progress import progress

    out_path = Path(out_path)
    if out_path.suffix != ".npy":
        raise ConfigError(f"input store path {out_path} must end in .npy")
    modality = spec["modality"]
    cfg = config_for_kind(cfg, spec)
    expected = kind_spec(cfg, modality, {**resolved_sizes(cfg, {}), **spec["sizes"]})
    if expected != spec:
        raise ConfigError(f"input store {out_path}: the spec of {kind_name(spec)} is not one this version writes "
                          f"({kind_name(expected)}); re-run the workflow so that it plans the kind afresh")
    extra = {"manifest": manifest} if manifest is not None else {}
    dataset = dataset_from_config(cfg, split, augment=False, modalities=(modality,), store=False, **spec["sizes"], **extra)
    if len(dataset) == 0:
        raise ConfigError(f"split {split.upper()} has no run: nothing to store in {out_path}; check data.* and the manifest")
    if int(threads) > 1:
        import torch

        arrays = _StoredArrays(dataset, modality, tensors=True)
        loader = torch.utils.data.DataLoader(arrays, batch_size=None, shuffle=False, num_workers=int(threads),
                                             collate_fn=_identity)
    else:
        arrays = _StoredArrays(dataset, modality)
        loader = (arrays[index] for index in range(len(arrays)))
    dtype = np.uint8 if modality in PIXEL_MODALITIES else np.float32
    num_images: list[int] = []
    with atomic_path(out_path) as tmp:  # moved into place only when every row is written
        rows = RowFile(tmp, len(dataset))
        try:
            for item in progress(loader, f"inputs {kind_name(spec)} {split.lower()}", total=len(dataset), unit="run"):
                if "error" in item:
                    raise DataError(item["error"])
                rows.write(np.asarray(item["data"]).astype(dtype, copy=False))
                if "num_images" in item:
                    num_images.append(item["num_images"])
        finally:
            rows.close()
        rows.check_complete()
    sidecar = {"format": FORMAT_VERSION, "key": kind_key(spec), "kind": kind_name(spec), "modality": modality,
               "split": split.lower(), "spec": spec, "sample_ids": dataset.sample_ids,
               "shape": list(np.load(out_path, mmap_mode="r").shape), "dtype": np.dtype(dtype).name,
               "data_digest": file_digest(out_path)}  # not the mtime: Snakemake sets its outputs' mtimes
    if modality == "post_weld_images":
        sidecar["num_images"] = num_images
    write_json(sidecar_file(out_path), sidecar)  # after the data file: a kill in between leaves no current pair
    return out_path
