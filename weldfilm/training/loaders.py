"""Device choice and seeded data loaders: what the training core, the methods and the feature-cache
build (a data service, ``weldfilm.features``) all use; no method code."""

from __future__ import annotations

import torch

from weldfilm.errors import ConfigError
from weldfilm.training.seeding import seeded_generator


def resolve_device(train_cfg: dict) -> torch.device:
    """``train.device``: auto -> cuda when available else cpu; cuda without a GPU is an error."""
    choice = train_cfg.get("device", "auto")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but torch sees no CUDA device; set train.device: auto or cpu")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


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
