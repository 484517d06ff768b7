"""Anomaly-map post-processing shared by the baselines that produce spatial maps (M3DM, Dinomaly)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, 1, H, W)`` maps (kernel radius 3 sigma, reflect padding)."""
    if sigma <= 0:
        return maps
    radius = min(int(math.ceil(3 * sigma)), min(maps.shape[-2:]) - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    padded = F.pad(maps, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1))
