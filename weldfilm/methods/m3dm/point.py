"""M3DM's point branch in plain torch: pseudo point cloud, Point-MAE-style transformer, patch projection.

Section 10.4.2 of the paper draft: the sensor table becomes an organised pseudo point cloud
``(3, S, S)`` = (x, y, depth); a Point-MAE-style transformer (farthest point sampling + kNN groups,
mini-PointNet group embedding, ViT blocks, taps at chosen blocks) gives one feature per group; the
features are carried back to a 2-D patch grid as M3DM does (interpolated onto every point of the
organised cloud from the 3 nearest group centres, 3 x 3 average pool, adaptive average pool to the
grid). Module names follow Point-MAE's
``MAE_encoder`` so that real Point-MAE weights load strictly (``load_point_mae_checkpoint``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from weldfilm.methods.m3dm.coreset import farthest_point_sample
from weldfilm.data.readers import resample_channels
from weldfilm.errors import BackboneError


def pseudo_point_cloud(table: np.ndarray, size: int = 224) -> torch.Tensor:
    """Organised pseudo point cloud ``(3, size, size)`` of a raw sensor table ``(rows, C)``.

    The table is min-max normalised with its global min and max (over all channels), averaged over
    channels, linearly interpolated to ``size`` values and tiled row-wise into a depth map; the
    channels are the column coordinate x, the row coordinate y (both in [0, 1]) and the depth. A
    constant table has no range: its depth is 0 everywhere.
    """
    table = np.asarray(table, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] == 0:
        raise ValueError(f"sensor table must be (rows >= 1, channels), got shape {table.shape}")
    low, high = table.min(), table.max()
    scaled = (table - low) / (high - low) if high > low else np.zeros_like(table)
    signal = resample_channels(scaled.mean(axis=1, keepdims=True), size)[:, 0]
    coords = np.linspace(0.0, 1.0, size)
    x_map, y_map = np.meshgrid(coords, coords)  # x varies along columns, y along rows
    depth = np.tile(signal, (size, 1))
    return torch.from_numpy(np.stack([x_map, y_map, depth]).astype(np.float32))


def knn_group(points: torch.Tensor, centres: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``group_size`` nearest points of each centre.

    points ``(B, N, 3)``, centres ``(B, G, 3)`` -> neighbourhoods ``(B, G, k, 3)`` relative to their
    centre, and their point indices ``(B, G, k)``. One batch element at a time bounds memory (G x N).
    """
    indices = torch.stack([torch.topk(torch.cdist(c, p), group_size, dim=-1, largest=False).indices
                           for p, c in zip(points, centres)])
    batch = torch.arange(points.shape[0], device=points.device)[:, None, None]
    neighbourhoods = points[batch, indices] - centres.unsqueeze(2)
    return neighbourhoods, indices


class GroupEncoder(nn.Module):
    """Point-MAE's mini-PointNet: ``(B, G, k, 3)`` neighbourhoods -> ``(B, G, out_dim)`` group tokens."""

    def __init__(self, out_dim: int):
        super().__init__()
        self.first_conv = nn.Sequential(nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True),
                                        nn.Conv1d(128, 256, 1))
        self.second_conv = nn.Sequential(nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                         nn.Conv1d(512, out_dim, 1))

    def forward(self, neighbourhoods: torch.Tensor) -> torch.Tensor:
        batch, groups, k, _ = neighbourhoods.shape
        x = self.first_conv(neighbourhoods.reshape(batch * groups, k, 3).transpose(1, 2))
        pooled = x.max(dim=2, keepdim=True).values
        x = self.second_conv(torch.cat([pooled.expand(-1, -1, k), x], dim=1))
        return x.max(dim=2).values.reshape(batch, groups, -1)


class Attention(nn.Module):
    """Multi-head self-attention with Point-MAE's parameter names (``qkv`` without bias, ``proj``)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (ViT / Point-MAE)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class BlockStack(nn.Module):
    """Holds the blocks as ``.blocks`` (Point-MAE's ``TransformerEncoder`` key layout)."""

    def __init__(self, dim: int, depth: int, num_heads: int):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, num_heads) for _ in range(depth))


class PointTransformer(nn.Module):
    """Point-MAE-style encoder; returns the layer-normed outputs of the ``taps`` blocks, concatenated.

    forward(points ``(B, N, 3)``) -> features ``(B, G, trans_dim * len(taps))`` and centres ``(B, G, 3)``.
    """

    def __init__(self, trans_dim: int = 384, depth: int = 12, num_heads: int = 6, group_size: int = 128,
                 num_groups: int = 1024, taps: tuple[int, ...] = (3, 7, 11)):
        super().__init__()
        if trans_dim % num_heads:
            raise ValueError(f"trans_dim {trans_dim} must be divisible by num_heads {num_heads}")
        if not taps or any(not 0 <= t < depth for t in taps):
            raise ValueError(f"taps {list(taps)} must be block indices in [0, {depth})")
        self.group_size, self.num_groups, self.taps = group_size, num_groups, tuple(taps)
        self.encoder = GroupEncoder(trans_dim)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, trans_dim))
        self.blocks = BlockStack(trans_dim, depth, num_heads)
        self.norm = nn.LayerNorm(trans_dim)
        self.apply(_init_weights)

    @property
    def out_dim(self) -> int:
        return self.norm.normalized_shape[0] * len(self.taps)

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if points.shape[1] < max(self.group_size, self.num_groups):
            raise ValueError(f"{points.shape[1]} points cannot make {self.num_groups} groups of {self.group_size}")
        centre_idx = farthest_point_sample(points, self.num_groups)
        centres = torch.gather(points, 1, centre_idx.unsqueeze(-1).expand(-1, -1, 3))
        neighbourhoods, _ = knn_group(points, centres, self.group_size)
        x, pos = self.encoder(neighbourhoods), self.pos_embed(centres)
        taps = []
        for index, block in enumerate(self.blocks.blocks):
            x = block(x + pos)
            if index in self.taps:
                taps.append(self.norm(x))
        return torch.cat(taps, dim=-1), centres


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def load_point_mae_checkpoint(model: PointTransformer, path: str | Path) -> dict:
    """Load a Point-MAE pretraining checkpoint's ``MAE_encoder`` weights strictly (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"m3dm.point_mae_checkpoint {path} does not exist (set it to null for random init)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("base_model", state.get("model", state)) if isinstance(state, dict) else state
    prefix = "MAE_encoder."
    encoder = {key.removeprefix("module.")[len(prefix):]: value for key, value in state.items()
               if key.removeprefix("module.").startswith(prefix)}
    if not encoder:
        raise BackboneError(f"{path} holds no '{prefix}*' weights; is it a Point-MAE pretraining checkpoint?")
    wanted = model.state_dict()
    encoder = {key: value for key, value in encoder.items() if key in wanted}
    missing = sorted(set(wanted) - set(encoder))
    if missing:
        raise BackboneError(f"{path} lacks weights for {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
                            "m3dm.point_* sizes must match the checkpoint (trans_dim 384, depth 12)")
    model.load_state_dict(encoder, strict=True)
    return {"point_mae_checkpoint": str(path), "tensors_loaded": len(encoder)}


def interpolate_to_points(points: torch.Tensor, centres: torch.Tensor, features: torch.Tensor, k: int = 3,
                          chunk: int = 16384) -> torch.Tensor:
    """Group features carried back onto every point (M3DM's ``interpolating_points``, PointNet++ feature propagation).

    points ``(B, N, 3)``, centres ``(B, G, 3)``, features ``(B, G, C)`` -> ``(B, N, C)``: each point
    takes the inverse squared-distance weighted mean (``1 / (d^2 + 1e-8)``) of the features of its
    ``k`` nearest centres (one centre: its feature). One sample and ``chunk`` points at a time bound
    the memory of the point-centre distances.
    """
    k = min(k, centres.shape[1])
    out = features.new_empty(points.shape[0], points.shape[1], features.shape[-1])
    for b in range(points.shape[0]):
        for start in range(0, points.shape[1], chunk):
            block = points[b, start:start + chunk]
            squared, idx = torch.topk(torch.cdist(block, centres[b]).square(), k, dim=-1, largest=False)
            weight = 1.0 / (squared + 1e-8)
            weight = weight / weight.sum(dim=-1, keepdim=True)
            out[b, start:start + chunk] = torch.einsum("nk,nkc->nc", weight, features[b][idx])
    return out


def features_on_patch_grid(cloud: torch.Tensor, centres: torch.Tensor, features: torch.Tensor,
                           grid: tuple[int, int]) -> torch.Tensor:
    """Carry group features to a 2-D patch grid as M3DM does.

    cloud ``(B, 3, H, W)`` organised points; centres ``(B, G, 3)``; features ``(B, G, C)`` ->
    ``(B, C, grid_h, grid_w)``: the features are interpolated onto every point of the organised
    cloud (``interpolate_to_points``), laid out as a ``(C, H, W)`` map, smoothed by a 3 x 3 average
    pool with stride 1 (``AvgPool2d(3, 1)``, no padding) and average-pooled onto the grid
    (``AdaptiveAvgPool2d``). One sample at a time (a paper-size sample is 224 x 224 x 1152 floats).
    """
    batch, _, height, width = cloud.shape
    if min(height, width) < 3:
        raise ValueError(f"the organised cloud ({height} x {width}) is smaller than M3DM's 3 x 3 average pool")
    out = []
    for b in range(batch):
        points = cloud[b:b + 1].flatten(2).transpose(1, 2)  # (1, H*W, 3), row-major like the cloud
        dense = interpolate_to_points(points, centres[b:b + 1], features[b:b + 1])
        dense = dense.transpose(1, 2).reshape(1, features.shape[-1], height, width)
        out.append(F.adaptive_avg_pool2d(F.avg_pool2d(dense, 3, stride=1), grid))
    return torch.cat(out)
