"""Mamba block of the sensor encoder: pre-norm + residual around transformers' ``MambaMixer``.

``MambaMixer`` has the parameter names of ``mamba_ssm.Mamba`` (``in_proj``, ``conv1d``, ``x_proj``,
``dt_proj``, ``A_log``, ``D``, ``out_proj``), so state dicts carry over. The selective scan runs on
the ``mamba_ssm`` CUDA kernels when that package is installed (transformers picks them up at import),
else on ``mambapy``'s parallel scan (``use_mambapy=True``), else on the sequential torch loop;
``scan_implementation()`` says which.
"""

from __future__ import annotations

import importlib.util
import math

import torch
from torch import nn

D_STATE = 16
D_CONV = 4
EXPAND = 2


def scan_implementation(device: torch.device | str | None = None) -> str:
    """Which selective-scan path a MambaBlock takes on ``device`` (recorded in run metadata)."""
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    if on_cuda and importlib.util.find_spec("mamba_ssm") is not None:
        return "mamba_ssm CUDA kernels"
    if importlib.util.find_spec("mambapy") is not None:
        return "mambapy parallel scan (use_mambapy=True)"
    return "sequential torch scan (transformers fallback)"


def make_mamba_mixer(dim: int, d_state: int = D_STATE, d_conv: int = D_CONV, expand: int = EXPAND) -> nn.Module:
    """A ``MambaMixer`` with ``mamba_ssm.Mamba``'s defaults (dt_rank = ceil(dim / 16), conv bias, no linear bias)."""
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    config = MambaConfig(hidden_size=dim, state_size=d_state, conv_kernel=d_conv, expand=expand,
                         time_step_rank=math.ceil(dim / 16), use_conv_bias=True, use_bias=False,
                         hidden_act="silu", num_hidden_layers=1, use_mambapy=True)
    return MambaMixer(config, layer_idx=0)


class MambaBlock(nn.Module):
    """x + Mamba(LayerNorm(x)) on (B, T, dim)."""

    def __init__(self, dim: int, d_state: int = D_STATE, d_conv: int = D_CONV, expand: int = EXPAND):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mixer = make_mamba_mixer(dim, d_state, d_conv, expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mixer(self.norm(x))
