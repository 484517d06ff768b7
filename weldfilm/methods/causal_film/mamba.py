"""Mamba block of the sensor encoder: pre-norm + residual around a Mamba mixer (Gu & Dao).

Two mixers with the parameter names of ``mamba_ssm.Mamba`` (``in_proj``, ``conv1d``, ``x_proj``,
``dt_proj``, ``A_log``, ``D``, ``out_proj``), so state dicts carry over between them:

* on CUDA with ``mamba_ssm`` installed: transformers' ``MambaMixer``, which runs its CUDA kernels;
* everywhere else: ``SelectiveScanMixer`` here, the same math in plain torch with ``mambapy``'s
  parallel scan (importing transformers' Mamba module costs ~3 s of CPU per process, more than a
  default-profile training run's scan). ``scan_implementation()`` says which path a device takes.
"""

from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F
from torch import nn

D_STATE = 16
D_CONV = 4
EXPAND = 2


def uses_cuda_kernels(device: torch.device | str | None = None) -> bool:
    """True where transformers' MambaMixer would run the ``mamba_ssm`` CUDA kernels."""
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    return on_cuda and importlib.util.find_spec("mamba_ssm") is not None


def scan_implementation(device: torch.device | str | None = None) -> str:
    """Which selective-scan path a MambaBlock takes on ``device`` (recorded in run metadata)."""
    if uses_cuda_kernels(device):
        return "mamba_ssm CUDA kernels (transformers MambaMixer)"
    return "mambapy parallel scan (weldfilm SelectiveScanMixer)"


class SelectiveScanMixer(nn.Module):
    """Mamba mixer in plain torch: in_proj -> causal depthwise conv -> SiLU -> selective scan -> SiLU gate -> out_proj.

    Initialisation as transformers' ``MambaMixer`` (S4D-real ``A_log``, ``D = 1``, ``dt_proj`` uniform
    +-rank^-0.5 with the inverse-softplus bias of dt ~ log-uniform [1e-3, 1e-1], floor 1e-4).
    """

    def __init__(self, dim: int, d_state: int = D_STATE, d_conv: int = D_CONV, expand: int = EXPAND,
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4):
        super().__init__()
        inner = expand * dim
        self.rank, self.d_state = math.ceil(dim / 16), d_state
        self.conv1d = nn.Conv1d(inner, inner, kernel_size=d_conv, groups=inner, padding=d_conv - 1, bias=True)
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.x_proj = nn.Linear(inner, self.rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.rank, inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))
        with torch.no_grad():
            bound = self.rank ** -0.5
            self.dt_proj.weight.uniform_(-bound, bound)
            dt = torch.exp(torch.rand(inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.out_proj = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from mambapy.pscan import pscan

        length = x.shape[1]
        u, gate = self.in_proj(x).chunk(2, dim=-1)                                       # (B, L, inner)
        u = F.silu(self.conv1d(u.transpose(1, 2))[..., :length]).transpose(1, 2)
        dt_low, b_in, c_in = self.x_proj(u).split([self.rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt_low))                                            # (B, L, inner)
        decay = torch.exp(dt.unsqueeze(-1) * -torch.exp(self.A_log))                     # (B, L, inner, N)
        drive = dt.unsqueeze(-1) * b_in.unsqueeze(2) * u.unsqueeze(-1)                   # (B, L, inner, N)
        states = pscan(decay, drive)                                                     # h_t = decay_t h_{t-1} + drive_t
        y = (states @ c_in.unsqueeze(-1)).squeeze(-1) + u * self.D
        return self.out_proj(y * F.silu(gate))


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
        self.mixer = (make_mamba_mixer(dim, d_state, d_conv, expand) if uses_cuda_kernels()
                      else SelectiveScanMixer(dim, d_state, d_conv, expand))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mixer(self.norm(x))
