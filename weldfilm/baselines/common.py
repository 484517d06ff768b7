"""Pieces the baselines share: the protocol's selection split, an in-memory input cache, a split-result memo."""

from __future__ import annotations

from pathlib import Path

import torch

from weldfilm.errors import ConfigError
from weldfilm.io import stable_hash


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
