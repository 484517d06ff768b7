"""Dinomaly baseline (paper section 10.4.3): pure modules and functions, no fitting code.

Frozen DINOv2-with-registers encoder -> middle blocks fused (averaged) -> noisy bottleneck MLP
(dropout on its input first) -> decoder of linear-attention blocks -> reconstruct each group's
encoder features. CLS and register tokens pass through the bottleneck and decoder and are dropped
only when the feature maps are built (upstream ``ViTill``, ``remove_class_token=False``). Trainable
weights start from a truncated normal (std 0.01, cut at +-0.03; biases 0), as upstream. Training loss
= global cosine distance per group with hard mining; anomaly map = 1 - cosine per patch, blurred by a
5 x 5 Gaussian (sigma 4, zero padding: upstream ``get_gaussian_kernel``); image score = max pixel;
run score = mean (default) or max over the run's images (the authors scored single images).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from weldfilm.metrics.maps import BLUR_PADDINGS, gaussian_blur
from weldfilm.errors import ConfigError, DataError
from weldfilm.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from weldfilm.training.precision import as_fp32, backbone_autocast


RUN_AGGREGATIONS = {"max": "amax", "mean": "mean"}  # config name -> scatter_reduce reduction over a run's images
DEFAULT_RUN_AGGREGATION = "mean"  # why: schema dinomaly.run_aggregation
INIT_STD = 0.01  # upstream: trunc_normal_(std=0.01, a=-0.03, b=0.03) on every trainable Linear weight
INIT_BOUND = 0.03


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """The positive feature map phi(x) = ELU(x) + 1 of linear attention."""
    return F.elu(x) + 1.0


class LinearAttention(nn.Module):
    """Multi-head linear attention: ``phi(q) (phi(k)^T v) / (phi(q) . sum_s phi(k_s))`` (no softmax)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"LinearAttention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = elu_feature_map(qkv[0]), elu_feature_map(qkv[1]), qkv[2]  # (B, heads, N, d)
        kv = torch.einsum("bhsd,bhse->bhde", k, v)
        normaliser = torch.einsum("bhnd,bhd->bhn", q, k.sum(dim=2))
        out = torch.einsum("bhnd,bhde->bhne", q, kv) / normaliser.unsqueeze(-1)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class DecoderBlock(nn.Module):
    """Pre-norm transformer block with linear attention and a 4x GELU MLP; LayerNorm eps 1e-8."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-8):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = LinearAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class BottleneckMLP(nn.Module):
    """The noisy bottleneck (upstream ``bMlp``): Dropout on the *input* features first, then
    Linear(dim -> hidden) -> GELU -> Dropout -> Linear(hidden -> dim) -> Dropout (one rate for all three)."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def init_trainable_(module: nn.Module, std: float = INIT_STD, bound: float = INIT_BOUND) -> None:
    """Upstream's init of the bottleneck and decoder: every Linear weight from a normal (std ``std``)
    truncated to ``[-bound, bound]``, Linear biases 0, LayerNorm weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, mean=0.0, std=std, a=-bound, b=bound)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def default_layer_groups(num_layers: int) -> list[list[int]]:
    """Middle encoder blocks split into two groups: ViT-B (12) -> [[2, 3, 4, 5], [6, 7, 8, 9]], scaled for others."""
    start, stop = round(num_layers / 6), round(5 * num_layers / 6)
    if stop - start < 2:
        start, stop = max(0, num_layers - 2), num_layers
    if stop - start < 2:
        raise ConfigError(f"Dinomaly needs an encoder with at least 2 blocks, got {num_layers}")
    layers = list(range(start, stop))
    half = len(layers) // 2
    return [layers[:half], layers[half:]]


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the incoming gradient by a fixed tensor."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scale,) = ctx.saved_tensors
        return grad * scale, None


def scale_gradient_where(tensor: torch.Tensor, mask: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``factor`` where ``mask`` is true.

    ``mask`` broadcasts against ``tensor`` (e.g. ``(B, 1, H, W)`` for a ``(B, C, H, W)`` feature map).
    """
    scale = torch.where(mask, torch.tensor(factor, dtype=tensor.dtype, device=tensor.device),
                        torch.tensor(1.0, dtype=tensor.dtype, device=tensor.device))
    return _ScaleGradient.apply(tensor, scale)


def global_cosine_hard_mining(encoder_maps: Sequence[torch.Tensor], decoder_maps: Sequence[torch.Tensor],
                              hard_ratio: float, easy_factor: float = 0.1) -> torch.Tensor:
    """Dinomaly's loss: mean over groups of ``1 - cos`` between flattened encoder and decoder maps per sample.

    Hard mining: the points whose distance ``1 - cos`` (over channels) lies below the
    ``hard_ratio`` quantile (the easiest ``hard_ratio`` fraction) pass only ``easy_factor`` of their
    gradient to the decoder. Encoder maps are targets (detached).
    """
    if not 0.0 <= hard_ratio < 1.0:
        raise ValueError(f"hard_ratio must be in [0, 1), got {hard_ratio}")
    loss = 0.0
    for target, recon in zip(encoder_maps, decoder_maps, strict=True):
        target = target.detach()
        with torch.no_grad():
            point_distance = 1 - F.cosine_similarity(target, recon, dim=1).unsqueeze(1)  # (B, 1, H, W)
            keep = max(1, int(point_distance.numel() * (1 - hard_ratio)))
            threshold = torch.topk(point_distance.flatten(), k=keep).values[-1]
        recon = scale_gradient_where(recon, point_distance < threshold, easy_factor)
        loss = loss + (1 - F.cosine_similarity(target.flatten(1), recon.flatten(1), dim=1)).mean()
    return loss / len(encoder_maps)


def anomaly_map(encoder_maps: Sequence[torch.Tensor], decoder_maps: Sequence[torch.Tensor], size: int,
                sigma: float, kernel_size: int | None = 5, padding: str = "zeros") -> torch.Tensor:
    """``1 - cos`` per patch and group, bilinearly upsampled to ``size``, averaged, blurred by a
    ``kernel_size`` Gaussian of ``sigma`` (Dinomaly: 5 x 5, sigma 4, zero padding): ``(B, 1, size, size)``."""
    maps = [F.interpolate(1 - F.cosine_similarity(e, d, dim=1).unsqueeze(1), size=(size, size), mode="bilinear",
                          align_corners=False) for e, d in zip(encoder_maps, decoder_maps, strict=True)]
    return gaussian_blur(torch.stack(maps).mean(dim=0), sigma, kernel_size, padding)


def image_scores(maps: torch.Tensor, top_ratio: float = 0.0) -> torch.Tensor:
    """``(B, 1, H, W)`` -> ``(B,)``: the max pixel (``top_ratio`` 0) or the mean of the top ``top_ratio`` pixels."""
    flat = maps.flatten(1)
    if top_ratio <= 0:
        return flat.amax(dim=1)
    k = max(1, int(flat.shape[1] * top_ratio))
    return flat.topk(k, dim=1).values.mean(dim=1)


class DinomalyHead(nn.Module):
    """Frozen encoder + trainable bottleneck and decoder; ``training_losses`` / ``anomaly_scores`` for the Trainer.

    Batches are run batches of ``collate_batch``: ``post_weld_images (B, N, 3, R, R)`` in [0, 1]
    (already resized to R) and ``num_images (B,)``; every real image is one sample, centre-cropped
    to ``crop_size`` and ImageNet-normalised here. A run's score is the mean (``run_aggregation``
    default; or the max) over its images' scores. With ``decode_prefix_tokens`` (upstream) the CLS
    and register tokens go through the bottleneck and decoder; without, they are dropped before the
    bottleneck. The encoder's weights are not part of ``state_dict`` (it is frozen and loaded from
    its directory).
    """

    def __init__(self, encoder: nn.Module, layer_groups: Sequence[Sequence[int]], decoder_depth: int,
                 crop_size: int, dropout: float = 0.2, bottleneck_ratio: float = 4.0, map_size: int = 256,
                 blur_sigma: float = 4.0, score_top_ratio: float = 0.0, hard_ratio: float = 0.9,
                 hard_ramp_steps: int = 1000, easy_factor: float = 0.1,
                 run_aggregation: str = DEFAULT_RUN_AGGREGATION, blur_kernel_size: int | None = 5,
                 blur_padding: str = "zeros", decode_prefix_tokens: bool = True):
        super().__init__()
        if run_aggregation not in RUN_AGGREGATIONS:
            raise ConfigError(f"dinomaly.run_aggregation must be one of {sorted(RUN_AGGREGATIONS)}, "
                              f"got {run_aggregation!r}")
        if blur_kernel_size is not None and (blur_kernel_size < 1 or blur_kernel_size % 2 == 0):
            raise ConfigError(f"dinomaly.blur_kernel_size must be a positive odd number or null, got {blur_kernel_size}")
        if blur_padding not in BLUR_PADDINGS:
            raise ConfigError(f"dinomaly.blur_padding must be one of {list(BLUR_PADDINGS)}, got {blur_padding!r}")
        config = encoder.config
        self.layer_groups = [list(map(int, group)) for group in layer_groups]
        layers = sorted({layer for group in self.layer_groups for layer in group})
        if not layers or layers[0] < 0 or layers[-1] >= config.num_hidden_layers:
            raise ConfigError(f"dinomaly.layer_groups {self.layer_groups} must index encoder blocks "
                              f"0..{config.num_hidden_layers - 1}")
        if decoder_depth % len(self.layer_groups):
            raise ConfigError(f"dinomaly.decoder_depth {decoder_depth} must be a multiple of the "
                              f"{len(self.layer_groups)} layer groups")
        if crop_size % config.patch_size:
            raise ConfigError(f"dinomaly.crop_size {crop_size} must be a multiple of the encoder patch size "
                              f"{config.patch_size}")
        encoder.encoder.layer = encoder.encoder.layer[: layers[-1] + 1]  # later blocks are never used
        encoder.requires_grad_(False)
        self.encoder = encoder.eval()
        self.encoder.register_state_dict_post_hook(_drop_own_keys)
        self.register_load_state_dict_post_hook(_ignore_missing_encoder_keys)
        dim, heads = config.hidden_size, config.num_attention_heads
        self.prefix_tokens = 1 + int(getattr(config, "num_register_tokens", 0))
        self.target_layers = layers
        self.decode_prefix_tokens = bool(decode_prefix_tokens)
        self.bottleneck = BottleneckMLP(dim, int(dim * bottleneck_ratio), dropout)
        self.decoder = nn.ModuleList(DecoderBlock(dim, heads) for _ in range(decoder_depth))
        init_trainable_(self.bottleneck)
        init_trainable_(self.decoder)
        self.crop_size, self.map_size, self.blur_sigma = crop_size, map_size, blur_sigma
        self.blur_kernel_size, self.blur_padding = blur_kernel_size, blur_padding
        self.score_top_ratio, self.hard_ratio, self.easy_factor = score_top_ratio, hard_ratio, easy_factor
        self.hard_ramp_steps, self.run_aggregation = hard_ramp_steps, run_aggregation
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen: no dropout, ever
        return self

    def images_of(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Real images of a run batch, cropped and normalised ``(M, 3, c, c)``, and each image's run index ``(M,)``."""
        images = batch["post_weld_images"]
        counts = torch.as_tensor(batch["num_images"], device=images.device)
        if (counts < 1).any():
            missing = [sid for sid, n in zip(batch["sample_id"], counts.tolist()) if n < 1]
            raise DataError(f"Dinomaly: runs without post-weld images cannot be scored: {missing}")
        slots = torch.arange(images.shape[1], device=images.device)
        valid = slots.unsqueeze(0) < counts.unsqueeze(1)  # (B, N)
        run_index = torch.arange(images.shape[0], device=images.device).unsqueeze(1).expand_as(valid)[valid]
        flat = images[valid]
        top, left = (flat.shape[-2] - self.crop_size) // 2, (flat.shape[-1] - self.crop_size) // 2
        if top < 0 or left < 0:
            raise ConfigError(f"Dinomaly: images of size {tuple(flat.shape[-2:])} are smaller than "
                              f"dinomaly.crop_size {self.crop_size}; raise dinomaly.resize")
        crop = flat[..., top: top + self.crop_size, left: left + self.crop_size]
        return (crop - self.mean) / self.std, run_index

    def _prefix_in_sequence(self) -> int:
        """CLS + register tokens still in the bottleneck's sequence (0 without ``decode_prefix_tokens``)."""
        return self.prefix_tokens if self.decode_prefix_tokens else 0

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images -> what the frozen encoder gives the head (the same in every epoch):
        the bottleneck's input ``(M, T, dim)`` (mean of the target blocks, with the CLS and register
        tokens when ``decode_prefix_tokens``) and each group's patch features ``(M, groups, P, dim)``."""
        with backbone_autocast(images.device):  # train.backbone_precision (bf16 on CUDA when set)
            hidden = self.encoder(pixel_values=images, output_hidden_states=True).hidden_states
        hidden = tuple(as_fp32(state) for state in hidden)
        skip = self.prefix_tokens - self._prefix_in_sequence()
        blocks = {layer: hidden[layer + 1][:, skip:] for layer in self.target_layers}
        tokens = torch.stack(list(blocks.values())).mean(dim=0)
        patches = self._prefix_in_sequence()
        targets = torch.stack([torch.stack([blocks[l] for l in group]).mean(dim=0)[:, patches:]
                               for group in self.layer_groups], dim=1)
        return tokens, targets

    def reconstruct(self, tokens: torch.Tensor, targets: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Encoded ``(tokens, targets)`` -> (encoder maps, decoder maps), one ``(M, dim, h, w)`` map per group."""
        x = self.bottleneck(tokens)
        decoded = []
        for block in self.decoder:
            x = block(x)
            decoded.append(x)
        decoded = decoded[::-1]  # the last decoder block reconstructs the earliest group
        per_group = len(decoded) // len(self.layer_groups)
        decoder_groups = [torch.stack(decoded[g * per_group:(g + 1) * per_group]).mean(dim=0)
                          for g in range(len(self.layer_groups))]
        patches, side = self._prefix_in_sequence(), math.isqrt(targets.shape[2])
        return ([_to_map(targets[:, g], side) for g in range(targets.shape[1])],
                [_to_map(t[:, patches:], side) for t in decoder_groups])

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Normalised images -> (encoder maps, decoder maps), one ``(M, dim, h, w)`` map per group.

        The fused encoder tokens (mean of the target blocks) go through the bottleneck and decoder,
        with the CLS and register tokens when ``decode_prefix_tokens``; the maps hold patch tokens only.
        """
        return self.reconstruct(*self.encode(images))

    @torch.no_grad()
    def encode_runs(self, batch: dict) -> dict[str, torch.Tensor]:
        """A run batch's encoder outputs per image slot (what ``dinomaly_cache`` stores): ``tokens``
        ``(B, N, T, dim)``, ``targets`` ``(B, N, groups, P, dim)`` (zeros past a run's images), ``num_images``."""
        images, run_index = self.images_of(batch)
        tokens, targets = self.encode(images)
        counts = torch.as_tensor(batch["num_images"], device=images.device)
        valid = torch.arange(batch["post_weld_images"].shape[1], device=images.device).unsqueeze(0) < counts.unsqueeze(1)
        slots = {"tokens": tokens, "targets": targets}
        out = {}
        for name, value in slots.items():
            full = value.new_zeros((*valid.shape, *value.shape[1:]))
            full[valid] = value
            out[name] = full
        out["num_images"] = counts
        return out

    def inputs_of(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(tokens, targets, run_index)`` of a batch's real images: from the encoder cache when the
        batch carries ``encoded_tokens`` / ``encoded_targets`` (``dinomaly_cache.EncodedRuns``), else
        by running the frozen encoder on its ``post_weld_images``."""
        if "encoded_tokens" not in batch:
            images, run_index = self.images_of(batch)
            return (*self.encode(images), run_index)
        tokens, targets = batch["encoded_tokens"], batch["encoded_targets"]
        counts = torch.as_tensor(batch["num_images"], device=tokens.device)
        if (counts < 1).any():
            missing = [sid for sid, n in zip(batch["sample_id"], counts.tolist()) if n < 1]
            raise DataError(f"Dinomaly: runs without post-weld images cannot be scored: {missing}")
        valid = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0) < counts.unsqueeze(1)
        run_index = torch.arange(tokens.shape[0], device=tokens.device).unsqueeze(1).expand_as(valid)[valid]
        return tokens[valid], targets[valid], run_index

    def current_hard_ratio(self) -> float:
        """Hard-mining ratio, ramped linearly from 0 to ``hard_ratio`` over ``hard_ramp_steps`` steps."""
        progress = min(1.0, int(self.train_steps) / max(1, self.hard_ramp_steps))
        return self.hard_ratio * progress

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        tokens, targets, _ = self.inputs_of(batch)
        encoder_maps, decoder_maps = self.reconstruct(tokens, targets)
        hard_ratio = self.current_hard_ratio()
        loss = global_cosine_hard_mining(encoder_maps, decoder_maps, hard_ratio, self.easy_factor)
        if self.training:
            self.train_steps += 1
        return {"loss": loss, "hard_ratio": torch.tensor(hard_ratio)}

    def anomaly_maps(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image anomaly maps ``(M, 1, map_size, map_size)`` and each image's run index ``(M,)``."""
        tokens, targets, run_index = self.inputs_of(batch)
        encoder_maps, decoder_maps = self.reconstruct(tokens, targets)
        return anomaly_map(encoder_maps, decoder_maps, self.map_size, self.blur_sigma, self.blur_kernel_size,
                           self.blur_padding), run_index

    def image_scores_of(self, maps: torch.Tensor) -> torch.Tensor:
        """Image scores of maps ``(M, 1, H, W)`` -> ``(M,)`` (max, or the top-ratio mean)."""
        return image_scores(maps, self.score_top_ratio)

    def scores_and_maps(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Run scores ``(B,)`` = mean (or max, ``run_aggregation``) over each run's image scores, and
        each run's map of its highest-scoring image ``(B, map_size, map_size)``, from one forward pass."""
        maps, run_index = self.anomaly_maps(batch)
        per_image = self.image_scores_of(maps)
        runs = torch.zeros(len(batch["num_images"]), dtype=per_image.dtype, device=per_image.device)
        scores = runs.scatter_reduce(0, run_index, per_image, reduce=RUN_AGGREGATIONS[self.run_aggregation],
                                     include_self=False)
        best = [(run_index == run).nonzero().flatten() for run in range(len(runs))]
        best = torch.stack([mine[per_image[mine].argmax()] for mine in best])
        return scores, maps[best, 0]

    def anomaly_scores(self, batch: dict) -> torch.Tensor:
        """A run's score = mean (or max, ``run_aggregation``) over its images' scores -> ``(B,)``."""
        return self.scores_and_maps(batch)[0]


def _to_map(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """Patch tokens ``(M, side*side, dim)`` -> feature map ``(M, dim, side, side)``."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)


def _drop_own_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]


def _ignore_missing_encoder_keys(module: nn.Module, incompatible_keys) -> None:
    missing = incompatible_keys.missing_keys
    for key in [k for k in missing if k.startswith("encoder.")]:
        missing.remove(key)
