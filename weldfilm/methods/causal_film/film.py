"""L1 of Causal-FiLM: the sensor modulator and feature-wise linear modulation (spec section 3).

``SensorModulator``: Linear(C_s -> h_s) -> 2 temporal blocks (Mamba, pre-norm + residual; or a GRU for
the ablation) -> last time step -> Linear(h_s -> 2d) -> (gamma' , beta), gamma = gamma' + 1, both
shaped (B, 1, d) to broadcast over tokens. ``film(F, gamma, beta) = F * gamma + beta``.
"""

from __future__ import annotations

import torch
from torch import nn

from weldfilm.methods.causal_film.mamba import MambaBlock

SENSOR_ENCODERS = ("mamba", "gru")


class SensorModulator(nn.Module):
    """Sensor sequence (B, T_s, C_s) -> FiLM parameters gamma, beta of shape (B, 1, d)."""

    def __init__(self, d_model: int, sensor_channels: int = 6, hidden_dim: int = 128, encoder: str = "mamba",
                 num_layers: int = 2):
        super().__init__()
        if encoder not in SENSOR_ENCODERS:
            raise ValueError(f"sensor encoder must be one of {SENSOR_ENCODERS}, got '{encoder}'")
        self.encoder_kind = encoder
        self.d_model = d_model
        self.embed = nn.Linear(sensor_channels, hidden_dim)
        if encoder == "mamba":
            self.temporal = nn.Sequential(*[MambaBlock(hidden_dim) for _ in range(num_layers)])
        else:
            self.temporal = nn.GRU(hidden_dim, hidden_dim, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_dim, 2 * d_model)

    def encode(self, sensor: torch.Tensor) -> torch.Tensor:
        """(B, T_s, C_s) -> (B, h_s): the temporal encoder's last time step."""
        hidden = self.embed(sensor)
        hidden = self.temporal(hidden)[0] if self.encoder_kind == "gru" else self.temporal(hidden)
        return hidden[:, -1]

    def forward(self, sensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gamma_offset, beta = self.head(self.encode(sensor)).chunk(2, dim=-1)
        return (gamma_offset + 1.0).unsqueeze(1), beta.unsqueeze(1)


def film(tokens: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Feature-wise linear modulation, broadcast over the token axis."""
    return tokens * gamma + beta


def identity_film_parameters(batch_size: int, d_model: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gamma = 1, beta = 0 of shape (B, 1, d): FiLM switched off."""
    ones = torch.ones(batch_size, 1, d_model, dtype=like.dtype, device=like.device)
    return ones, torch.zeros_like(ones)
