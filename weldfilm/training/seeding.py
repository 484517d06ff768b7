"""Seeding and capture/restore of every random number generator a run touches (for exact resume)."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) so that a CPU run repeats exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seeded_generator(seed: int) -> torch.Generator:
    """A torch.Generator for a DataLoader's shuffling, independent of the global RNG."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def loader_generators(loader) -> list[torch.Generator]:
    """The distinct torch.Generators a DataLoader (or its samplers) draws from, in a fixed order."""
    found: list[torch.Generator] = []
    candidates = [getattr(loader, "generator", None)]
    for attr in ("sampler", "batch_sampler"):
        sampler = getattr(loader, attr, None)
        while sampler is not None:
            candidates.append(getattr(sampler, "generator", None))
            sampler = getattr(sampler, "sampler", None)
    for gen in candidates:
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


def capture_rng_state(loader=None) -> dict:
    """Every RNG state as tensors/lists/ints, so that ``torch.load(weights_only=True)`` can read it back."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "internal": list(py_internal), "gauss_next": py_gauss},
        "loader": [g.get_state() for g in loader_generators(loader)] if loader is not None else [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict, loader=None) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    if loader is not None:
        restore_loader_state(state["loader"], loader)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore_loader_state(loader_state: list, loader, source="the checkpoint") -> None:
    """Set the loader's generators (``loader_generators``) to ``loader_state`` (the ``loader`` entry of a
    :func:`capture_rng_state`); ``source`` names where it comes from in the error."""
    generators = loader_generators(loader)
    if len(generators) != len(loader_state):
        raise ValueError(f"the loader has {len(generators)} generators, {source} {len(loader_state)}")
    for gen, gen_state in zip(generators, loader_state):
        gen.set_state(gen_state)
