"""Greedy farthest-point selection: Point-MAE's farthest point sampling and PatchCore's coreset.

Both pick, one at a time, the item farthest from everything picked so far, starting at index 0.
``greedy_farthest_selection`` is that one loop; ``farthest_point_sample`` applies it to point
clouds and ``coreset_indices`` to a patch memory bank after a sparse random projection.
"""

from __future__ import annotations

import numpy as np
import torch

from weldfilm.errors import ConfigError


def greedy_farthest_selection(items: torch.Tensor, count: int, desc: str | None = None) -> torch.Tensor:
    """Indices ``(B, count)`` of the greedy k-centre selection in each batch element of ``items`` (B, N, D).

    The first pick is index 0; each next pick maximises the distance to its nearest earlier pick.
    ``desc``: show the picks' progress (rate, ETA) under that name (the memory-bank coreset; the
    per-batch farthest point sampling stays silent).
    """
    if items.dim() != 3:
        raise ValueError(f"items must be (B, N, D), got shape {tuple(items.shape)}")
    batch, num_items, _ = items.shape
    if not 1 <= count <= num_items:
        raise ConfigError(f"cannot select {count} of {num_items} items (need 1 <= count <= N)")
    chosen = torch.zeros(batch, count, dtype=torch.long, device=items.device)
    rows = torch.arange(batch, device=items.device)
    # Squared distances as |x|^2 - 2 x.l + |l|^2: one batched matrix-vector product per pick.
    squared_norms = (items * items).sum(dim=-1)  # (B, N)
    nearest = torch.full((batch, num_items), float("inf"), dtype=items.dtype, device=items.device)
    pick = torch.zeros(batch, dtype=torch.long, device=items.device)
    steps = range(1, count)
    if desc is not None:
        from weldfilm.training.progress import progress

        steps = progress(steps, desc, unit="pick")
    for step in steps:
        last = items[rows, pick]  # (B, D)
        to_last = squared_norms - 2 * torch.bmm(items, last.unsqueeze(-1)).squeeze(-1) + squared_norms[rows, pick, None]
        nearest = torch.minimum(nearest, to_last.clamp_min_(0))
        pick = torch.argmax(nearest, dim=1)
        chosen[:, step] = pick
    return chosen


def farthest_point_sample(points: torch.Tensor, count: int) -> torch.Tensor:
    """Farthest point sampling of ``count`` centres from point clouds ``(B, N, 3)`` -> indices ``(B, count)``."""
    return greedy_farthest_selection(points, count)


def projection_dim(num_items: int, eps: float) -> int:
    """Johnson-Lindenstrauss target dimension (sklearn's ``johnson_lindenstrauss_min_dim``)."""
    from sklearn.random_projection import johnson_lindenstrauss_min_dim

    return int(johnson_lindenstrauss_min_dim(num_items, eps=eps))


def coreset_indices(bank: torch.Tensor, fraction: float, eps: float = 0.9, seed: int = 0,
                    desc: str | None = None) -> tuple[torch.Tensor, dict]:
    """PatchCore/M3DM greedy coreset of a memory bank ``(N, D)``: ``int(fraction * N)`` indices (at least 1).

    Items are first projected with ``SparseRandomProjection(eps=eps)`` (seeded). When the
    Johnson-Lindenstrauss dimension is not smaller than ``D`` (small banks or narrow features) the
    projection cannot reduce anything and the selection runs on the raw features; the returned info
    says which happened (the authors' code printed an error and went on silently).
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"m3dm.f_coreset must be in (0, 1], got {fraction}")
    num_items, dim = bank.shape
    count = max(1, int(fraction * num_items))
    if fraction >= 1:
        return torch.arange(num_items), {"selected": num_items, "of": num_items, "projected_dim": None}
    target = projection_dim(num_items, eps)
    if target < dim:
        from sklearn.random_projection import SparseRandomProjection

        projector = SparseRandomProjection(n_components=target, eps=eps, random_state=seed)
        projected = torch.from_numpy(np.asarray(projector.fit_transform(bank.float().cpu().numpy()), dtype=np.float32))
        info = {"projected_dim": target}
    else:
        projected = bank.float()
        info = {"projected_dim": None, "projection_skipped": f"JL dimension {target} >= feature dimension {dim}"}
    picked = greedy_farthest_selection(projected.to(bank.device).unsqueeze(0), count, desc)[0]
    info.update({"selected": count, "of": num_items, "eps": eps, "seed": seed, "fraction": fraction})
    return picked.cpu(), info
