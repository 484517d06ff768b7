"""Anomaly-map post-processing shared by the baselines that produce spatial maps (M3DM, Dinomaly)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BLUR_PADDINGS = ("reflect", "zeros")


def gaussian_kernel_1d(sigma: float, kernel_size: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``kernel_size`` taps (odd) centred on the middle tap.

    The outer product of this kernel with itself is the normalised 2-D ``kernel_size x kernel_size``
    Gaussian (Dinomaly's ``get_gaussian_kernel``), so blurring rows then columns equals the 2-D filter.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"Gaussian blur kernel size must be a positive odd number, got {kernel_size}")
    offsets = torch.arange(kernel_size, dtype=dtype, device=device) - (kernel_size - 1) / 2
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float, kernel_size: int | None = None,
                  padding: str = "reflect") -> torch.Tensor:
    """Separable Gaussian blur of ``(B, 1, H, W)`` maps; the output has the input's size.

    ``kernel_size`` None: radius ``ceil(3 sigma)`` (M3DM's default here); an odd number: that many taps
    (Dinomaly: 5 at sigma 4). ``padding`` ``reflect`` mirrors the border (radius capped below the map
    size); ``zeros`` pads with zeros like a ``Conv2d(padding=k // 2)`` (Dinomaly), which lowers values
    near the border.
    """
    if padding not in BLUR_PADDINGS:
        raise ValueError(f"Gaussian blur padding must be one of {BLUR_PADDINGS}, got {padding!r}")
    if kernel_size is not None and (kernel_size < 1 or kernel_size % 2 == 0):
        raise ValueError(f"Gaussian blur kernel size must be a positive odd number, got {kernel_size}")
    if sigma <= 0:
        return maps
    radius = int(math.ceil(3 * sigma)) if kernel_size is None else (kernel_size - 1) // 2
    if padding == "reflect":
        radius = min(radius, min(maps.shape[-2:]) - 1)
    kernel = gaussian_kernel_1d(sigma, 2 * radius + 1, maps.dtype, maps.device)
    mode = "reflect" if padding == "reflect" else "constant"
    padded = F.pad(maps, (radius, radius, radius, radius), mode=mode)
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1))
