"""M3DM's patch memory banks, re-weighted nearest-neighbour scores and decision-layer fusion.

- ``PatchBank``: one modality's bank of standardised patch features (scalar mean/std of all
  training patches), reduced by the greedy coreset, with the training run of every entry.
- ``reweighted_score``: PatchCore/M3DM image score: the largest nearest-neighbour distance of a
  test patch, re-weighted by the distances of that patch to the neighbours of its nearest entry.
- ``DecisionFuser``: scikit-learn's linear ``SGDOneClassSVM`` over per-modality scores; only its
  ``coef_`` / ``offset_`` are kept (``score_samples(X) == X @ coef_``), so no pickle is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from weldfilm.methods.m3dm.coreset import coreset_indices
from weldfilm.metrics.maps import gaussian_blur
from weldfilm.errors import CheckpointError


@dataclass
class PatchBank:
    """Standardised patch features ``(M, D)``, the scalar mean/std used, and each entry's source run."""

    patches: torch.Tensor
    mean: float
    std: float
    sources: torch.Tensor

    @classmethod
    def build(cls, patches: torch.Tensor, sources: torch.Tensor, f_coreset: float, eps: float,
              seed: int, desc: str | None = None) -> tuple["PatchBank", dict]:
        """Standardise all training patches ``(N, D)`` and keep their greedy coreset (progress under ``desc``)."""
        mean, std = patches.mean().item(), patches.std().item()
        if not std > 0:
            raise ValueError("all training patch features are identical; the memory bank cannot be built")
        standardised = (patches - mean) / std
        keep, info = coreset_indices(standardised, f_coreset, eps, seed, desc)
        return cls(standardised[keep].contiguous(), mean, std, sources[keep].contiguous()), info

    def standardise(self, patches: torch.Tensor) -> torch.Tensor:
        return (patches - self.mean) / self.std

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors for a safetensors file."""
        return {f"{prefix}.patches": self.patches.cpu(), f"{prefix}.sources": self.sources.cpu(),
                f"{prefix}.mean_std": torch.tensor([self.mean, self.std], dtype=torch.float64)}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], prefix: str) -> "PatchBank":
        try:
            mean, std = tensors[f"{prefix}.mean_std"].tolist()
            return cls(tensors[f"{prefix}.patches"].float(), mean, std, tensors[f"{prefix}.sources"])
        except KeyError as exc:
            raise CheckpointError(f"memory bank file lacks {exc}; re-run `weldfilm train --method m3dm`") from exc


def reweighted_score(patches: torch.Tensor, bank: torch.Tensor, n_reweight: int = 3,
                     allowed: torch.Tensor | None = None, distance_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Image score and per-patch nearest-neighbour distances of one sample.

    patches ``(P, D)`` and bank ``(M, D)`` are standardised. ``s* = max_p min_m ||p - m||``; with
    ``m*`` the nearest entry of the worst patch ``p*`` and ``N`` the ``n_reweight - 1`` nearest other
    entries of ``m*``: ``w = 1 - exp(s*/sqrt(D)) / sum_{m in N} exp(||p* - m|| / sqrt(D))``, score
    ``w * s*``. Distances are divided by ``distance_scale`` first (M3DM's two-bank code used 1000).
    ``allowed`` (bool ``(M,)``) hides entries, e.g. those of the sample's own run (leave one out).
    Returns the score (0-dim) and the distances ``(P,)`` (unscaled) for the anomaly map.
    """
    if allowed is not None:
        bank = bank[allowed]
    if bank.shape[0] < n_reweight:
        raise ValueError(f"memory bank has {bank.shape[0]} usable entries, fewer than n_reweight={n_reweight}")
    nearest, nearest_idx = torch.cdist(patches, bank).min(dim=1)
    worst = torch.argmax(nearest)
    s_star = nearest[worst] / distance_scale
    entry = bank[nearest_idx[worst]].unsqueeze(0)
    neighbours = torch.topk(torch.cdist(entry, bank)[0], n_reweight, largest=False).indices[1:]
    to_neighbours = torch.linalg.vector_norm(patches[worst] - bank[neighbours], dim=1) / distance_scale
    root_dim = math.sqrt(patches.shape[1])
    weight = 1 - torch.exp(s_star / root_dim) / torch.exp(to_neighbours / root_dim).sum()
    return weight * s_star, nearest


def distance_maps(distances: torch.Tensor, grid: tuple[int, int], size: int, sigma: float) -> torch.Tensor:
    """Per-patch distances ``(B, P)`` -> anomaly maps ``(B, size, size)``: bilinear upsampling, then blur."""
    maps = distances.reshape(-1, 1, *grid)
    maps = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)
    return gaussian_blur(maps, sigma)[:, 0]


class DecisionFuser:
    """Decision-layer fusion: a linear one-class SVM over per-modality scores (M3DM's ``detect_fuser``).

    The fused anomaly score is ``SGDOneClassSVM.score_samples`` = ``X @ coef_`` as in M3DM's
    two-bank code (with non-negative distance features and a positive ``coef_``, larger = more
    anomalous).
    """

    def __init__(self, nu: float = 0.5, max_iter: int = 1000, seed: int = 42):
        self.nu, self.max_iter, self.seed = nu, max_iter, seed
        self.coef: np.ndarray | None = None
        self.offset: float | None = None

    def fit(self, features: np.ndarray) -> "DecisionFuser":
        from sklearn.linear_model import SGDOneClassSVM

        model = SGDOneClassSVM(nu=self.nu, max_iter=self.max_iter, random_state=self.seed)
        model.fit(np.asarray(features, dtype=np.float64))
        self.coef, self.offset = model.coef_.astype(np.float64), float(model.offset_[0])
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        if self.coef is None:
            raise CheckpointError("decision fuser is not fitted; run `weldfilm train --method m3dm` first")
        return np.asarray(features, dtype=np.float64) @ self.coef

    def state(self) -> dict:
        return {"nu": self.nu, "max_iter": self.max_iter, "seed": self.seed,
                "coef": None if self.coef is None else self.coef.tolist(), "offset": self.offset}

    @classmethod
    def from_state(cls, state: dict) -> "DecisionFuser":
        fuser = cls(state["nu"], state["max_iter"], state["seed"])
        if state.get("coef") is not None:
            fuser.coef, fuser.offset = np.asarray(state["coef"], dtype=np.float64), float(state["offset"])
        return fuser
