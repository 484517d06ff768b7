"""Checkpoint files: state dicts only, written atomically, read with ``weights_only=True``.

A checkpoint is a dict ``{"model", "ema" (or None), "optimizer", "scheduler", "scaler", "epoch",
"best_metric", "best_epoch", "epochs_without_improvement", "selection", "rng", "finished"}``.
Anything unreadable becomes a :class:`CheckpointError` that names the file and what to do.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from weldfilm.errors import CheckpointError
from weldfilm.io import atomic_path


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically (a killed write leaves the previous file intact)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; CheckpointError if missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (train the run first: weldfilm train ...)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types (pickle, zip, runtime) for a damaged file
        raise CheckpointError(f"checkpoint {path} is corrupt or not a weldfilm checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); delete it and re-run training "
                              "without --resume") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path} holds no model state dict; delete it and re-run training")
    return state


def load_module_state(module: nn.Module, state_dict: dict, path: str | Path) -> None:
    """``module.load_state_dict`` with a CheckpointError naming the file when the shapes/keys differ."""
    try:
        module.load_state_dict(state_dict)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit the model built from this run's config "
                              f"({str(exc).splitlines()[0]}); was the config changed after training? "
                              "Re-train the run") from exc


def load_selected_weights(module: nn.Module, path: str | Path) -> dict:
    """Load the weights the run selected with (EMA when the run used EMA) into ``module``; return the checkpoint."""
    state = load_checkpoint(path)
    weights = state["ema"]["module"] if state.get("ema") else state["model"]
    load_module_state(module, weights, path)
    return state
