"""The Method contract (docs/ARCHITECTURE.md), the registry name -> class, and helpers every method shares.

A method is built from a run config (``weldfilm.config.run_config``), a run directory and a device.
Helpers here: device choice (``train.device``), seeded data loaders, the selection split of the
protocol, the normal-only training subset of spec 8.3 and the ``describe()`` skeleton.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from weldfilm.errors import ConfigError
from weldfilm.io import stable_hash
from weldfilm.training import Trainer, seeded_generator
from weldfilm.training.precision import configure_precision

REGISTRY: dict[str, str] = {
    "causal_film": "weldfilm.methods.causal_film.method:CausalFiLMMethod",
    "late_fusion": "weldfilm.methods.late_fusion.method:LateFusionMethod",
    "m3dm": "weldfilm.methods.m3dm.method:M3DMMethod",
    "dinomaly": "weldfilm.methods.dinomaly.method:DinomalyMethod",
}
SPLITS = ("train", "val", "test")


def get_method(name: str) -> type["Method"]:
    """The Method class registered as ``name`` (imported only now, so unused methods cost nothing)."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown method '{name}'; known: {', '.join(REGISTRY)}")
    module_name, class_name = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_method(cfg: dict, run_dir, device=None) -> "Method":
    """The method named by ``cfg['run']['method']``, for a run config from ``run_config``."""
    if "run" not in cfg:
        raise ConfigError("build_method needs a run config (weldfilm.config.run_config): 'run' is missing")
    return get_method(cfg["run"]["method"])(cfg, Path(run_dir), device)


def resolve_device(train_cfg: dict) -> torch.device:
    """``train.device``: auto -> cuda when available else cpu; cuda without a GPU is an error."""
    choice = train_cfg.get("device", "auto")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but torch sees no CUDA device; set train.device: auto or cpu")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def normal_only_indices(labels, sample_ids) -> list[int]:
    """Spec 8.3: keep a training sample if its label is 0, or its id contains 'good' or 'normal'."""
    return [i for i, (label, sid) in enumerate(zip(labels, sample_ids))
            if int(label) == 0 or "good" in str(sid).lower() or "normal" in str(sid).lower()]


def normal_only_subset(dataset) -> torch.utils.data.Subset:
    """``Subset`` of the normal samples of a dataset exposing ``labels`` and ``sample_ids``."""
    return torch.utils.data.Subset(dataset, normal_only_indices(dataset.labels, dataset.sample_ids))


def resolve_num_workers(value) -> int:
    """``train.num_workers``: an integer, or ``auto`` = the job's threads minus one (the main process
    keeps one). The job's threads are what ``torch.get_num_threads()`` says: scripts/snakemake_job.py
    sets it to the rule's ``threads`` (SLURM: the profile's set-threads), a plain process has the cores."""
    if value == "auto":
        return max(0, torch.get_num_threads() - 1)
    return int(value)


def make_loader(dataset, batch_size: int, shuffle: bool, seed: int = 0, num_workers=0,
                collate_fn=None) -> torch.utils.data.DataLoader:
    """A DataLoader whose shuffling uses its own seeded generator (repeatable, resumable); ``num_workers``
    may be ``auto`` (``resolve_num_workers``)."""
    if collate_fn is None:
        from weldfilm.data.dataset import collate_batch as collate_fn
    num_workers = resolve_num_workers(num_workers)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                                       collate_fn=collate_fn, generator=seeded_generator(seed),
                                       persistent_workers=False)


def scores_frame(sample_ids, scores) -> pd.DataFrame:
    """The frame ``Method.score`` returns: ``sample_id, score`` (higher = more anomalous)."""
    return pd.DataFrame({"sample_id": list(sample_ids), "score": np.asarray(scores, dtype=np.float64)})


class Method:
    """Base class of Causal-FiLM and the baselines (contract: docs/ARCHITECTURE.md)."""

    name: str = ""
    # Where the authors' code selected its checkpoint (used when train.selection_split is 'paper'):
    # "val", "test", or None (no selection: last epoch / train loss).
    paper_selection_split: str | None = "val"
    # Dataset modalities the method reads (keys of WeldingDataset's MODALITIES).
    modalities: tuple[str, ...] = ()

    def __init__(self, cfg: dict, run_dir: Path, device=None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = torch.device(device) if device is not None else resolve_device(cfg["train"])
        configure_precision(self.device, cfg["train"])  # TF32 + frozen encoders' autocast (weldfilm.training.precision)
        self.seed = int((cfg.get("run") or {}).get("seed", 0))
        self.notes: list[str] = []

    # ------------------------------------------------------------------------------ contract
    def describe(self) -> dict:
        """Modalities, input resolutions, augmentation, training and selection split (fairness table)."""
        run = self.cfg.get("run") or {}
        return {
            "method": self.name,
            "protocol": run.get("protocol"),
            "ablation": run.get("ablation"),
            "modalities": list(self.modalities),
            "input_resolution": self.input_resolution(),
            "augmentation": self.uses_augmentation(),
            "training_split": "TRAIN (normal only)",
            "selection_split": self.selection_split,
            "threshold_split": self.cfg.get("evaluation", {}).get("threshold_split", "val"),
        }

    def fit(self, resume: bool = False) -> dict:
        raise NotImplementedError

    def score(self, split: str) -> pd.DataFrame:
        raise NotImplementedError

    def anomaly_maps(self, split: str):
        """Per-sample spatial maps ``(N, H, W)`` in ``score`` order, or None (no real maps)."""
        return None

    def token_shapes(self) -> dict:
        """Backbone token shapes seen at run time (metadata ``token_shapes``); {} when none."""
        return {}

    # ------------------------------------------------------------------------------ helpers
    @property
    def selection_split(self) -> str | None:
        """'val', 'test' or None, from ``train.selection_split`` ('paper' -> the authors' choice)."""
        choice = self.cfg["train"].get("selection_split", "val")
        if choice == "paper":
            return self.paper_selection_split
        return None if choice == "none" else choice

    def uses_augmentation(self) -> bool:
        return bool(self.cfg["train"].get("use_augmentations", False))

    def input_resolution(self) -> dict:
        """The preprocessing sizes of the modalities this method reads."""
        p = self.cfg["preprocess"]
        table = {
            "video": {"frames": p["video_frames"], "size": p["frame_size"]},
            "post_weld_images": {"views": p["num_angles"], "size": p["image_size"]},
            "audio": {"type": p["audio_type"], "sr": p["audio_sr"], "bins": p["audio_mel_bins"],
                      "frames": p["audio_frames"]},
            "sensor": {"length": p["sensor_length"], "channels": p["sensor_channels"]},
        }
        return {m: table[m] for m in self.modalities if m in table}

    def dataset(self, split: str, augment: bool | None = False, modalities=None, **overrides):
        """``dataset_from_config`` for this run (``modalities`` defaults to the method's)."""
        from weldfilm.data.dataset import dataset_from_config

        if split.lower() not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got '{split}'")
        return dataset_from_config(self.cfg, split, augment=augment,
                                   modalities=modalities if modalities is not None else (self.modalities or None),
                                   **overrides)

    def loader(self, dataset, train: bool, batch_size: int | None = None, collate_fn=None):
        """Seeded loader: shuffled with ``train.batch_size`` for training, in order with ``eval_batch_size`` else."""
        t = self.cfg["train"]
        size = batch_size or (t["batch_size"] if train else t.get("eval_batch_size", 32))
        return make_loader(dataset, size, shuffle=train, seed=self.seed, num_workers=t.get("num_workers", 0),
                           collate_fn=collate_fn)

    def trainer(self, prefix: str = "", train_cfg: dict | None = None) -> Trainer:
        """The shared Trainer for this run dir (``train_cfg`` lets a baseline pass its own schedule keys)."""
        return Trainer(self.run_dir, train_cfg if train_cfg is not None else self.cfg["train"], self.device,
                       self.seed, prefix)


# ------------------------------------------------------------------ pieces several methods share
def fair_selection_split(method) -> str:
    """The method's selection split; the fair protocol allows only VAL (TEST is touched once, at the end)."""
    split = method.selection_split
    protocol = (method.cfg.get("run") or {}).get("protocol", "fair")
    if protocol == "fair" and split != "val":
        raise ConfigError(f"{method.name}: protocol 'fair' selects on VAL only, but train.selection_split gives "
                          f"{split!r}; use protocol paper_faithful for the authors' choice")
    if split is None:
        raise ConfigError(f"{method.name}: needs a selection split (val or test), train.selection_split is 'none'")
    return split


class MemoryCachedDataset(torch.utils.data.Dataset):
    """Keeps each decoded sample of a (non-augmented) dataset in memory after its first read.

    Epochs after the first skip video/audio/image decoding. Exposes ``labels`` and ``sample_ids`` like
    ``WeldingDataset``. With DataLoader workers the cache fills in the workers and is not shared (still correct).
    """

    def __init__(self, dataset):
        if getattr(dataset, "augment", False):
            raise ConfigError("MemoryCachedDataset would freeze the augmentation of an augmented dataset")
        self.dataset = dataset
        self.items: list = [None] * len(dataset)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        if self.items[index] is None:
            self.items[index] = self.dataset[index]
        return self.items[index]

    @property
    def labels(self):
        return self.dataset.labels

    @property
    def sample_ids(self):
        return self.dataset.sample_ids


class SplitResultMemo:
    """Per-process memo of a run's split results, valid while the run's fitted files are unchanged.

    ``weldfilm evaluate`` builds a fresh method for each split and, for TEST, scores VAL again for
    the threshold: with this memo VAL is decoded and scored once per process. An entry is keyed by
    the run folder, the split, the run config and the (size, mtime) of every file the result depends
    on, so a re-fit or another config recomputes it.
    """

    def __init__(self):
        self._entries: dict = {}

    @staticmethod
    def _key(run_dir, split: str, cfg: dict, files) -> tuple | None:
        stamps = []
        for path in files:
            if not Path(path).is_file():
                return None  # not fitted yet: compute (and let it raise its own clear error)
            stat = Path(path).stat()
            stamps.append((str(path), stat.st_size, stat.st_mtime_ns))
        return str(Path(run_dir).resolve()), split.lower(), stable_hash(cfg), tuple(stamps)

    def get_or_compute(self, run_dir, split: str, cfg: dict, files, compute):
        """The memoised ``compute()`` of ``(run_dir, split, cfg)`` while the fitted ``files`` are unchanged."""
        key = self._key(run_dir, split, cfg, files)
        if key is None:
            return compute()
        if key not in self._entries:
            self._entries[key] = compute()
        return self._entries[key]

    def clear(self) -> None:
        self._entries.clear()
