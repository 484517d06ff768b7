"""Learning-rate schedules: warmup + cosine (per epoch, the default) and warm-cosine per iteration.

Both are ``LambdaLR`` multipliers of the optimiser's base lr, so their state dict is plain numbers and
a resumed run continues the curve exactly. OneCycle is ``torch.optim.lr_scheduler.OneCycleLR``.
"""

from __future__ import annotations

import math

import torch


def warmup_cosine_value(step: int, total_steps: int, base_lr: float, min_lr: float,
                        warmup_steps: int = 0, warmup_start_lr: float = 0.0) -> float:
    """The lr at ``step`` (0-based): linear ``warmup_start_lr -> base_lr`` over ``warmup_steps``, then cosine to ``min_lr``.

    With ``warmup_steps == 0`` this is exactly ``CosineAnnealingLR(T_max=total_steps, eta_min=min_lr)``:
    ``min_lr + (base_lr - min_lr) * (1 + cos(pi * step / total_steps)) / 2``.
    """
    if step < warmup_steps:
        return warmup_start_lr + (base_lr - warmup_start_lr) * step / warmup_steps
    cosine_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / cosine_steps, 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _WarmupCosineFactor:
    """Picklable multiplier for LambdaLR (the lr divided by the base lr)."""

    def __init__(self, total_steps, base_lr, min_lr, warmup_steps, warmup_start_lr):
        self.args = (total_steps, base_lr, min_lr, warmup_steps, warmup_start_lr)

    def __call__(self, step: int) -> float:
        total, base, low, warm, start = self.args
        return warmup_cosine_value(step, total, base, low, warm, start) / base


def warmup_cosine_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, min_lr: float,
                            warmup_steps: int = 0, warmup_start_lr: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR following :func:`warmup_cosine_value`; step it once per epoch (or once per iteration)."""
    base_lr = optimizer.param_groups[0]["lr"]
    factor = _WarmupCosineFactor(total_steps, base_lr, min_lr, warmup_steps, warmup_start_lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def default_optimizer(params, train_cfg: dict, steps_per_epoch: int):
    """The paper's optimiser (AdamW, betas (0.9, 0.999), eps 1e-8) with per-epoch warmup + cosine.

    ``fused=True``: one kernel updates every parameter (CPU and CUDA), ~7x faster per step than the
    per-tensor loop for a head of ~100 small tensors on CPU; the same update rule.

    Returns ``(optimizer, scheduler, "epoch")``, the same triple a head's ``configure_optimizer`` returns.
    """
    optimizer = torch.optim.AdamW(params, lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"],
                                  betas=(0.9, 0.999), eps=1e-8, fused=True)
    scheduler = warmup_cosine_scheduler(optimizer, total_steps=train_cfg["epochs"], min_lr=train_cfg["min_lr"],
                                        warmup_steps=train_cfg.get("warmup_epochs", 0),
                                        warmup_start_lr=train_cfg.get("warmup_start_lr", 0.0))
    return optimizer, scheduler, "epoch"
