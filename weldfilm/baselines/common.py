"""Pieces the Late Fusion and Dinomaly baselines share: the protocol's selection split, an in-memory input cache."""

from __future__ import annotations

import torch

from weldfilm.errors import ConfigError


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
