"""Training objective of Causal-FiLM (spec section 6) and the anomaly score (spec section 7).

L = L_cos + lambda_l1 L_l1 + lambda_gram L_gram + lambda_text L_clip, all averaged over the batch:

* L_cos = 1 - cos(Z_res, Z_pred);
* L_l1 = Smooth-L1 (beta 0.1) per feature; with top_k_ratio < 1 only the k = max(1, floor(d * ratio))
  largest per sample are averaged (hard-feature mining);
* L_gram = MSE(G(Z_pred), G(Z_res)) with G(z) = z z^T / d (B x B);
* L_clip = 1 - cos(normalize(head(Z)), e_text), head = Linear(d -> 256) -> LayerNorm -> GELU ->
  Dropout(0.1) -> Linear(256 -> Dc), e_text the frozen CLIP embedding of the prompt ("a normal weld").
  Which Z the authors fed to the head is not in the spec: ``text_target`` chooses (default z_res).
  Without a text embedding the term is off and ``text_term_active`` is False (never a silent zero).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

TEXT_HEAD_HIDDEN = 256
TEXT_TARGETS = ("z_res", "z_pred")


def top_k_count(d_model: int, ratio: float) -> int:
    """k = floor(d * ratio), at least 1."""
    return max(1, math.floor(d_model * ratio))


def compute_anomaly_score(z_res: torch.Tensor, z_pred: torch.Tensor, top_k_ratio: float) -> torch.Tensor:
    """(1 - cos) + 10 * mean of the k largest |z_res - z_pred|, k = floor(d * ratio); shape (B,)."""
    cosine = F.cosine_similarity(z_res, z_pred, dim=-1)
    k = top_k_count(z_res.shape[-1], top_k_ratio)
    top = (z_res - z_pred).abs().topk(k, dim=-1).values.mean(dim=-1)
    return (1.0 - cosine) + 10.0 * top


def gram_matrix(z: torch.Tensor) -> torch.Tensor:
    """G = z z^T / d for z of shape (B, d)."""
    return z @ z.transpose(0, 1) / z.shape[-1]


class CLIPTextHead(nn.Sequential):
    """Trainable projection of a d-dim feature into CLIP's text space."""

    def __init__(self, d_model: int, clip_dim: int, dropout: float = 0.1):
        super().__init__(nn.Linear(d_model, TEXT_HEAD_HIDDEN), nn.LayerNorm(TEXT_HEAD_HIDDEN), nn.GELU(),
                         nn.Dropout(dropout), nn.Linear(TEXT_HEAD_HIDDEN, clip_dim))


class CausalFiLMLoss(nn.Module):
    """The weighted loss terms; ``forward`` returns a dict with ``loss`` (total) and each term."""

    def __init__(self, d_model: int, lambda_l1: float = 1.0, lambda_gram: float = 1.0, lambda_text: float = 0.01,
                 top_k_ratio: float = 0.5, text_embedding: torch.Tensor | None = None, text_target: str = "z_res"):
        super().__init__()
        if text_target not in TEXT_TARGETS:
            raise ValueError(f"text target must be one of {TEXT_TARGETS}, got '{text_target}'")
        self.lambda_l1, self.lambda_gram, self.lambda_text = lambda_l1, lambda_gram, lambda_text
        self.top_k_ratio = top_k_ratio
        self.text_target = text_target
        self.text_term_active = text_embedding is not None
        if self.text_term_active:
            embedding = torch.as_tensor(text_embedding, dtype=torch.float32).detach().flatten()
            self.register_buffer("text_embedding", F.normalize(embedding, dim=0))
            self.text_head = CLIPTextHead(d_model, embedding.numel())
        else:
            self.text_embedding = None
            self.text_head = None

    def l1_term(self, z_res: torch.Tensor, z_pred: torch.Tensor) -> torch.Tensor:
        per_feature = F.smooth_l1_loss(z_pred, z_res, beta=0.1, reduction="none")
        if self.top_k_ratio < 1.0:
            per_feature = per_feature.topk(top_k_count(per_feature.shape[-1], self.top_k_ratio), dim=-1).values
        return per_feature.mean()

    def text_term(self, z: torch.Tensor) -> torch.Tensor:
        projected = F.normalize(self.text_head(z), dim=-1)
        return (1.0 - projected @ self.text_embedding).mean()

    def forward(self, z_res: torch.Tensor, z_pred: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = {
            "cos": (1.0 - F.cosine_similarity(z_res, z_pred, dim=-1)).mean(),
            "l1": self.l1_term(z_res, z_pred),
            "gram": F.mse_loss(gram_matrix(z_pred), gram_matrix(z_res)),
        }
        total = terms["cos"] + self.lambda_l1 * terms["l1"] + self.lambda_gram * terms["gram"]
        if self.text_term_active:
            terms["text"] = self.text_term(z_res if self.text_target == "z_res" else z_pred)
            total = total + self.lambda_text * terms["text"]
        terms["loss"] = total
        return terms
