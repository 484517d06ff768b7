"""Exponential moving average of a model's weights (validation, selection and best.pt use it)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """``shadow = decay * shadow + (1 - decay) * weights`` after every optimiser step; buffers are copied."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"ema decay must lie in [0, 1], got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        shadow = self.module.state_dict()
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                shadow[name].mul_(self.decay).add_(value.detach(), alpha=1.0 - self.decay)
            else:
                shadow[name].copy_(value)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "decay": self.decay, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.decay = state["decay"]
        self.updates = state["updates"]
