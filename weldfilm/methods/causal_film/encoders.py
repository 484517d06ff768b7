"""L2 of Causal-FiLM: feature projectors, the process encoder and the robust result encoder (spec 2.2, 4).

* ``FeatureProjector``: Linear(D -> hidden) -> LayerNorm -> GELU -> Linear(hidden -> d) (hidden 512 in the paper).
* ``ProcessEncoder``: ``nn.TransformerDecoder`` (2 layers, 4 heads, ff 2d, dropout 0.1, batch_first) with
  tgt = video tokens, memory = audio tokens, no attention mask; mean over tgt tokens + LayerNorm.
  Single-branch ablations: the present modality is both tgt and memory (self-attention, then
  cross-attention to itself), so the module and its parameters stay the same.
* ``RobustResultEncoder``: on the two DINOv3 hidden states of one view: mean + GeM (learnable p, init 6)
  of the first, mean of the second, independent LayerNorms, concat (3 Di), gate
  Linear(3Di -> 3Di/4) -> SiLU -> Linear -> Sigmoid, projector Linear(3Di -> hidden, 512 in the paper) -> LayerNorm -> SiLU -> Linear(-> d).
  By default every token is pooled, CLS and register tokens included (the authors' code; paper-effective);
  ``drop_special_tokens=True`` drops the first ``num_special_tokens`` (1 CLS + the checkpoint's registers).
* ``pool_views``: max (paper) or mean over the views of a sample; padded views (index >= num_images) are
  excluded unless ``include_padded=True`` (the authors' code pooled the zero-padded views too).
"""

from __future__ import annotations

import torch
from torch import nn

from weldfilm.errors import DataError

PROCESS_BRANCHES = ("both", "video_only", "audio_only")
RESULT_POOLINGS = ("gem", "mean")
VIEW_POOLINGS = ("max", "mean")
RESULT_PROJECTOR_HIDDEN = 512


class FeatureProjector(nn.Sequential):
    """Linear -> LayerNorm -> GELU -> Linear, from a backbone width to the unified width d."""

    def __init__(self, in_dim: int, hidden_dim: int, d_model: int):
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(),
                         nn.Linear(hidden_dim, d_model))


class ProcessEncoder(nn.Module):
    """FiLM'd video (tgt) and audio (memory) tokens -> Z_proc (B, d)."""

    def __init__(self, d_model: int, num_layers: int = 2, num_heads: int = 4, dropout: float = 0.1,
                 branch: str = "both"):
        super().__init__()
        if branch not in PROCESS_BRANCHES:
            raise ValueError(f"process branch must be one of {PROCESS_BRANCHES}, got '{branch}'")
        self.branch = branch
        layer = nn.TransformerDecoderLayer(d_model, num_heads, dim_feedforward=2 * d_model, dropout=dropout,
                                           batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers=num_layers)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, video: torch.Tensor | None, audio: torch.Tensor | None) -> torch.Tensor:
        if self.branch == "both":
            tgt, memory = video, audio
        else:
            tgt = memory = video if self.branch == "video_only" else audio
        if tgt is None:
            raise ValueError(f"process branch '{self.branch}' needs its modality's tokens")
        return self.norm(self.decoder(tgt, memory).mean(dim=1))


class GeM(nn.Module):
    """Generalised mean over the token axis (dim 1): (mean x^p)^(1/p), x clamped at eps, learnable p."""

    def __init__(self, p: float = 6.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # float32: x^6 overflows float16 under autocast for |x| > 6.3
        return tokens.float().clamp(min=self.eps).pow(self.p).mean(dim=1).pow(1.0 / self.p).to(tokens.dtype)


class RobustResultEncoder(nn.Module):
    """Two hidden states of one view (M, 2, L, Di) -> Z_res per view (M, d)."""

    def __init__(self, image_dim: int, d_model: int, pooling: str = "gem", drop_special_tokens: bool = False,
                 num_special_tokens: int = 0, gem_p: float = 6.0, hidden_dim: int = RESULT_PROJECTOR_HIDDEN):
        super().__init__()
        if pooling not in RESULT_POOLINGS:
            raise ValueError(f"result pooling must be one of {RESULT_POOLINGS}, got '{pooling}'")
        self.pooling = pooling
        self.skip_tokens = int(num_special_tokens) if drop_special_tokens else 0
        self.gem = GeM(gem_p) if pooling == "gem" else None
        self.norms = nn.ModuleList([nn.LayerNorm(image_dim) for _ in range(3)])
        width = 3 * image_dim
        self.gate = nn.Sequential(nn.Linear(width, width // 4), nn.SiLU(), nn.Linear(width // 4, width), nn.Sigmoid())
        self.projector = nn.Sequential(nn.Linear(width, hidden_dim), nn.LayerNorm(hidden_dim), nn.SiLU(),
                                       nn.Linear(hidden_dim, d_model))

    def forward(self, hidden_pair: torch.Tensor) -> torch.Tensor:
        tokens = hidden_pair[:, :, self.skip_tokens:]
        if tokens.shape[2] == 0:
            raise ValueError(f"no patch tokens left after dropping {self.skip_tokens} special tokens")
        middle, last = tokens[:, 0], tokens[:, 1]
        second = self.gem(middle) if self.gem is not None else middle.mean(dim=1)
        pooled = [middle.mean(dim=1), second, last.mean(dim=1)]
        features = torch.cat([norm(x) for norm, x in zip(self.norms, pooled)], dim=-1)
        return self.projector(features * self.gate(features))


def view_mask(num_images: torch.Tensor, num_views: int, sample_ids=None, include_padded: bool = False) -> torch.Tensor:
    """(B, N) bool: which views enter the pooling. DataError for a sample without any image."""
    num_images = torch.as_tensor(num_images).view(-1, 1)
    if include_padded:
        return torch.ones(num_images.shape[0], num_views, dtype=torch.bool, device=num_images.device)
    if (num_images <= 0).any():
        empty = [sample_ids[i] if sample_ids else i for i in (num_images.view(-1) <= 0).nonzero().view(-1).tolist()]
        raise DataError(f"samples {empty} have no post-weld image, so their result feature is undefined; "
                        f"exclude them (data.exclude_runs) or set causal_film.view_padding: include")
    return torch.arange(num_views, device=num_images.device).view(1, -1) < num_images


def pool_views(per_view: torch.Tensor, mask: torch.Tensor, mode: str = "max") -> torch.Tensor:
    """(B, N, d) view features -> (B, d), max or mean over the views where ``mask`` is True."""
    if mode not in VIEW_POOLINGS:
        raise ValueError(f"view pooling must be one of {VIEW_POOLINGS}, got '{mode}'")
    mask = mask.unsqueeze(-1)
    if mode == "max":
        return per_view.masked_fill(~mask, float("-inf")).amax(dim=1)
    return (per_view * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
