"""StableAdamW, the optimiser of the Dinomaly baseline.

StableAdamW (Wortsman et al., 2023, "Stable and low-precision training for large-scale
vision-language models") is AdamW with AdaFactor-style *update clipping*: each tensor's learning
rate is divided by ``max(1, RMS(g^2 / v_hat))``, where ``v_hat`` is the bias-corrected second
moment. Dinomaly runs it with ``amsgrad=True`` and ``eps=1e-10``. The maintained package
``torch-optimi`` ships a StableAdamW without AMSGrad, so this small one is kept here.
"""

from __future__ import annotations

import torch


class StableAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) + per-tensor update clipping, optional AMSGrad."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, update_clipping: bool = True):
        if lr <= 0 or eps <= 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1) or weight_decay < 0:
            raise ValueError(f"StableAdamW: invalid lr={lr}, betas={betas}, eps={eps} or weight_decay={weight_decay}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        update_clipping=update_clipping)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                self._update(param, group, beta1, beta2)
        return loss

    def _update(self, param: torch.Tensor, group: dict, beta1: float, beta2: float) -> None:
        grad = param.grad
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(param)
        state["step"] += 1
        step = state["step"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        second_moment = exp_avg_sq
        if group["amsgrad"]:
            torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            second_moment = state["max_exp_avg_sq"]
        v_hat = second_moment / bias_correction2
        lr = group["lr"]
        if group["update_clipping"]:
            rms = (grad.square() / v_hat.clamp(min=group["eps"] ** 2)).mean().sqrt().item()
            lr = lr / max(1.0, rms)
        if group["weight_decay"]:
            param.mul_(1 - lr * group["weight_decay"])
        param.addcdiv_(exp_avg, v_hat.sqrt().add_(group["eps"]), value=-lr / bias_correction1)

