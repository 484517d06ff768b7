"""The Method contract (docs/ARCHITECTURE.md) and what every method shares.

A method is built by ``weldfilm.methods.build_method`` (the registry is ``weldfilm.methods.REGISTRY``)
from a run config (``weldfilm.config.run_config``), a run directory, a device and a feature folder.
Here: the ``Method`` base class (the fair-protocol selection guard runs in its constructor for every
method; ``split_result`` is its per-object cache of a split's results), the normal-only training subset
of spec 8.3, the ``describe()`` skeleton and ``MemoryCachedDataset``. Device and loaders:
``weldfilm.training.loaders``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from weldfilm.errors import ConfigError
from weldfilm.training import Trainer
from weldfilm.training.loaders import make_loader, resolve_device
from weldfilm.training.precision import configure_precision

SPLITS = ("train", "val", "test")


def normal_only_indices(labels, sample_ids) -> list[int]:
    """Spec 8.3: keep a training sample if its label is 0, or its id contains 'good' or 'normal'."""
    return [i for i, (label, sid) in enumerate(zip(labels, sample_ids))
            if int(label) == 0 or "good" in str(sid).lower() or "normal" in str(sid).lower()]


def normal_only_subset(dataset) -> torch.utils.data.Subset:
    """``Subset`` of the normal samples of a dataset exposing ``labels`` and ``sample_ids``."""
    return torch.utils.data.Subset(dataset, normal_only_indices(dataset.labels, dataset.sample_ids))


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

    # A method that must select its checkpoint on a split (train.selection_split 'none' is an error).
    needs_selection: bool = False

    def __init__(self, cfg: dict, run_dir: Path, device=None, feature_dir=None):
        """Every method takes these keywords (``weldfilm.methods.build_method``). ``device`` None =
        ``train.device``; ``feature_dir``: the feature-cache folder, read by the methods whose registry entry
        has ``feature_cache`` (they set ``self.feature_dir``), ignored by the others."""
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = torch.device(device) if device is not None else resolve_device(cfg["train"])
        configure_precision(self.device, cfg["train"])  # TF32 + frozen encoders' autocast (weldfilm.training.precision)
        self.seed = int((cfg.get("run") or {}).get("seed", 0))
        self.notes: list[str] = []
        self.feature_dir: Path | None = None
        self._split_results: dict = {}
        fair_selection_split(self)  # the fair-protocol guard, for every method

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

    def split_result(self, split: str, fitted_files, compute):
        """``compute()`` of ``split``, once per method object while the run's ``fitted_files`` are unchanged
        (size and mtime): the train job's object scores VAL once for its fit (fusion weights) and for the
        evaluation of VAL and of TEST (VAL threshold). A fitted file missing: computed each time (and left to
        raise its own error); a re-fit changes the files and recomputes."""
        stamps = []
        for path in fitted_files:
            path = Path(path)
            if not path.is_file():
                return compute()
            stat = path.stat()
            stamps.append((str(path), stat.st_size, stat.st_mtime_ns))
        key = (split.lower(), tuple(stamps))
        if key not in self._split_results:
            self._split_results[key] = compute()
        return self._split_results[key]

    def trainer(self, prefix: str = "", train_cfg: dict | None = None) -> Trainer:
        """The shared Trainer for this run dir (``train_cfg`` lets a baseline pass its own schedule keys)."""
        return Trainer(self.run_dir, train_cfg if train_cfg is not None else self.cfg["train"], self.device,
                       self.seed, prefix)


# ------------------------------------------------------------------ pieces several methods share
def fair_selection_split(method) -> str | None:
    """The method's selection split, checked: the fair protocol never selects on TEST (TEST is touched
    once, at the end; VAL or, for a method that selects nothing, none); a method with ``needs_selection``
    must have a split. ``Method.__init__`` runs it for every method."""
    split = method.selection_split
    protocol = (method.cfg.get("run") or {}).get("protocol", "fair")
    if protocol == "fair" and split not in ("val", None):
        raise ConfigError(f"{method.name}: protocol 'fair' selects on VAL only, but train.selection_split gives "
                          f"{split!r}; use protocol paper_faithful for the authors' choice")
    if split is None and method.needs_selection:
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
