"""Architectures of the six backbones as data: the ``tiny`` stand-ins and the ``paper`` (published) sizes.

One entry per backbone name (``vjepa2, ast, dinov3, clip, dino_vitb8, dinov2_reg``): the transformers
class and its config keyword arguments. ``paper`` holds the architecture of the checkpoint the paper
uses, taken from transformers' own configs and conversion scripts (and the checkpoints' config.json):

| name | class | checkpoint | hidden / layers / heads / MLP | tokens per call (weldfilm's shapes) |
|---|---|---|---|---|
| ``vjepa2`` | VJEPA2Model | facebook/vjepa2-vitl-fpc64-256 | 1024 / 24 / 16 / 4096 (ratio 4), patch 16, tubelet 2, fpc 64; predictor 384 / 12 / 12, 10 mask tokens | (32/2) x (64/16)^2 = 256 at 32 frames of 64 px |
| ``ast`` | ASTModel | MIT/ast-finetuned-audioset-14-14-0.443 | 768 / 12 / 12 / 3072, patch 16, **strides 14 x 14**, 1024 x 128 mel | 9 x 73 + 2 = 659 |
| ``dinov3`` | DINOv3ViTModel | facebook/dinov3-vith16plus-pretrain-lvd1689m | 1280 / 32 / 20 / 5120 gated (SwiGLU, silu), 4 registers, patch 16 | 196 + 1 + 4 = 201 at 224 px, per view |
| ``clip`` | CLIPTextModelWithProjection | openai/clip-vit-base-patch32 (text tower) | 512 / 12 / 8 / 2048, vocab 49408, 77 positions, projection 512 | one 512-d embedding |
| ``dino_vitb8`` | ViTModel | facebook/dino-vitb8 | 768 / 12 / 12 / 3072, patch 8, 224 px | 784 + 1 = 785 |
| ``dinov2_reg`` | Dinov2WithRegistersModel | facebook/dinov2-with-registers-base | 768 / 12 / 12 / 3072 (ratio 4), patch 14, 4 registers, image_size 518 | 784 + 1 + 4 = 789 at 392 px |

Recorded choices:

* **AST strides.** The checkpoint the config names (``ast-finetuned-audioset-14-14-0.443``) has
  ``frequency_stride = time_stride = 14`` (transformers' AST conversion sets 14 for "14-14"); the
  ``ASTConfig`` defaults (strides 10, 1214 tokens) are those of the 10-10 checkpoint. The 2026-12-01
  measurement in shared/reference used the defaults (1214 tokens, 261 GFLOP); at 14 x 14 the same call
  has 659 tokens (about half the FLOPs).
* **V-JEPA2 crop_size.** The published config has ``crop_size = 256``; V-JEPA2 builds its RoPE grid
  from ``crop_size`` and runs silently with wrong positions on frames of another size. As for the tiny
  backbones, the written config gets ``crop_size = frame_size`` (the frame size the project feeds,
  ``preprocess.frame_size``), and ``FrozenBackbones.from_config`` overrides it with
  ``preprocess.frame_size`` at load time anyway (as it does for a real checkpoint holding 256). No weight
  depends on ``crop_size`` or ``frames_per_clip`` (RoPE, no learned position table), so the weights are
  those of a 256-px checkpoint. ``frames_per_clip`` keeps the published 64.
* **CLIP vocabulary.** The text model has the published 49408 tokens; the offline tokenizer
  (``weldfilm.models.tiny.build_clip_tokenizer``) is padded to that size with never-produced
  ``<|unused_N|>`` entries and puts ``<|startoftext|>``/``<|endoftext|>`` at 49406/49407, as CLIP's own
  vocabulary does, so ``load_clip_tokenizer``'s size check holds exactly.
* **DINOv2-reg / DINO image_size.** Published 518 / 224; their learned position tables are
  interpolated to other input sizes by the models themselves (Dinomaly feeds 392 px).

``tiny`` keeps the earlier tiny stand-ins exactly (same configs, same seeds, so the same weights).
"""

from __future__ import annotations

import copy

from weldfilm.paths import TINY_BACKBONE_DIRS

BACKBONE_NAMES = tuple(TINY_BACKBONE_DIRS.values())  # the tiny folders' names, in seed order
SIZES = ("tiny", "paper", "paper_shapes")
# ``paper_shapes``: the ``paper`` architecture with the ``tiny`` width (these keys from CONFIGS["tiny"]): the
# published depth, patch/stride/register geometry and AST input size (so the paper's layer indices, Dinomaly's
# layer groups and the AST stretch 256 x 64 -> 1024 x 128 run as with the real checkpoints) at stand-in cost.
# CLIP stays tiny whole (its width and vocabulary come with the offline tokenizer). Config paper_shapes uses it.
WIDTH_KEYS = ("hidden_size", "num_attention_heads", "intermediate_size", "mlp_ratio", "pred_hidden_size",
              "pred_num_hidden_layers", "pred_num_attention_heads", "pred_mlp_ratio")
CLIP_VOCAB_SIZE = 49408  # CLIP BPE: 256 bytes + 256 bytes</w> + 48894 merges + 2 specials
CLIP_MAX_LENGTH = 77
# The preprocessing sizes a backbone's config may follow (tiny: all of them; paper: V-JEPA2's frame size).
SHAPE_KEYS = ("frame_size", "video_frames", "image_size", "mel_bins", "audio_frames")
DEFAULT_SHAPES = {"frame_size": 64, "video_frames": 32, "image_size": 224, "mel_bins": 64, "audio_frames": 256}

CLASS_NAMES = {
    "vjepa2": "VJEPA2Model",
    "ast": "ASTModel",
    "dinov3": "DINOv3ViTModel",
    "clip": "CLIPTextModelWithProjection",
    "dino_vitb8": "ViTModel",
    "dinov2_reg": "Dinov2WithRegistersModel",
}
CHECKPOINTS = {
    "vjepa2": "facebook/vjepa2-vitl-fpc64-256",
    "ast": "MIT/ast-finetuned-audioset-14-14-0.443",
    "dinov3": "facebook/dinov3-vith16plus-pretrain-lvd1689m",
    "clip": "openai/clip-vit-base-patch32 (text tower)",
    "dino_vitb8": "facebook/dino-vitb8",
    "dinov2_reg": "facebook/dinov2-with-registers-base",
}

_TINY_VISION = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)

# Static config kwargs; the shape-dependent ones are filled in by ``config_kwargs``.
CONFIGS = {
    "tiny": {
        "vjepa2": dict(hidden_size=32, num_attention_heads=2, mlp_ratio=2.0, num_hidden_layers=2, patch_size=16,
                       tubelet_size=2, pred_hidden_size=32, pred_num_hidden_layers=1, pred_num_attention_heads=2,
                       pred_mlp_ratio=2.0),
        "ast": dict(_TINY_VISION, num_hidden_layers=2, patch_size=16, frequency_stride=10, time_stride=10),
        "dinov3": dict(_TINY_VISION, num_hidden_layers=4, patch_size=16, num_register_tokens=4),
        "clip": dict(_TINY_VISION, num_hidden_layers=2, projection_dim=16, max_position_embeddings=CLIP_MAX_LENGTH),
        "dino_vitb8": dict(_TINY_VISION, num_hidden_layers=4, patch_size=8, image_size=224),
        "dinov2_reg": dict(hidden_size=32, num_attention_heads=2, mlp_ratio=2, num_hidden_layers=4, patch_size=14,
                           image_size=518, num_register_tokens=4),
    },
    "paper": {
        "vjepa2": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4.0, patch_size=16,
                       tubelet_size=2, frames_per_clip=64, in_chans=3, qkv_bias=True, hidden_act="gelu",
                       layer_norm_eps=1e-6, num_pooler_layers=3, pred_hidden_size=384, pred_num_hidden_layers=12,
                       pred_num_attention_heads=12, pred_mlp_ratio=4.0, pred_num_mask_tokens=10,
                       pred_zero_init_mask_tokens=True),
        "ast": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                    hidden_act="gelu", layer_norm_eps=1e-12, qkv_bias=True, patch_size=16, frequency_stride=14,
                    time_stride=14, max_length=1024, num_mel_bins=128),
        "dinov3": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=20, intermediate_size=5120,
                       use_gated_mlp=True, hidden_act="silu", num_register_tokens=4, patch_size=16, image_size=224,
                       layer_norm_eps=1e-5, layerscale_value=1.0, rope_theta=100.0, query_bias=True, key_bias=False,
                       value_bias=True, proj_bias=True, mlp_bias=True),
        "clip": dict(hidden_size=512, num_hidden_layers=12, num_attention_heads=8, intermediate_size=2048,
                     projection_dim=512, vocab_size=CLIP_VOCAB_SIZE, max_position_embeddings=CLIP_MAX_LENGTH,
                     hidden_act="quick_gelu", layer_norm_eps=1e-5),
        "dino_vitb8": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                           hidden_act="gelu", layer_norm_eps=1e-12, qkv_bias=True, patch_size=8, image_size=224),
        "dinov2_reg": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4,
                           hidden_act="gelu", layer_norm_eps=1e-6, layerscale_value=1.0, use_swiglu_ffn=False,
                           qkv_bias=True, patch_size=14, image_size=518, num_register_tokens=4),
    },
}


def _check(name: str, size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"backbone size {size!r} is not one of {', '.join(SIZES)}")
    if name not in BACKBONE_NAMES:
        raise ValueError(f"backbone name {name!r} is not one of {', '.join(BACKBONE_NAMES)}")


def model_class(name: str):
    """The transformers class of a backbone name."""
    import transformers

    _check(name, "tiny")
    return getattr(transformers, CLASS_NAMES[name])


def config_kwargs(name: str, size: str = "paper", clip_ids: dict | None = None, **shapes) -> dict:
    """Config kwargs of ``name`` at ``size`` for the preprocessing ``shapes`` (see ``SHAPE_KEYS``).

    ``tiny`` follows every shape (crop/frames, mel x time, image size); ``paper`` only sets V-JEPA2's
    ``crop_size`` to ``frame_size`` (see the module docstring), everything else is the published value.
    ``clip_ids`` gives the CLIP ``vocab_size``/``bos_token_id``/``eos_token_id`` of the tokenizer that goes
    with the model (required for ``tiny``; ``paper`` defaults to CLIP's 49408 / 49406 / 49407).
    """
    _check(name, size)
    unknown = set(shapes) - set(SHAPE_KEYS)
    if unknown:
        raise ValueError(f"unknown preprocessing sizes {sorted(unknown)}; known: {', '.join(SHAPE_KEYS)}")
    shape = {**DEFAULT_SHAPES, **shapes}
    if size == "paper_shapes":
        if name == "clip":
            return config_kwargs(name, "tiny", clip_ids, **shapes)
        tiny = CONFIGS["tiny"][name]
        kwargs = {**copy.deepcopy(CONFIGS["paper"][name]), **{k: tiny[k] for k in WIDTH_KEYS if k in tiny}}
        if "mlp_ratio" in tiny:  # the tiny MLP is given as a ratio: no published intermediate_size next to it
            kwargs.pop("intermediate_size", None)
        if name == "vjepa2":
            kwargs["crop_size"] = shape["frame_size"]
        return kwargs
    kwargs = copy.deepcopy(CONFIGS[size][name])
    if name == "vjepa2":
        kwargs["crop_size"] = shape["frame_size"]
        if size == "tiny":
            kwargs["frames_per_clip"] = shape["video_frames"]
    elif name == "ast" and size == "tiny":
        kwargs.update(max_length=shape["audio_frames"], num_mel_bins=shape["mel_bins"])
    elif name == "dinov3" and size == "tiny":
        kwargs["image_size"] = shape["image_size"]
    elif name == "clip":
        if clip_ids is None:
            if size == "tiny":
                raise ValueError("the tiny CLIP text model takes its vocabulary from the tokenizer: pass clip_ids")
            clip_ids = {"vocab_size": CLIP_VOCAB_SIZE, "bos_token_id": CLIP_VOCAB_SIZE - 2,
                        "eos_token_id": CLIP_VOCAB_SIZE - 1}
        kwargs.update(vocab_size=clip_ids["vocab_size"], bos_token_id=clip_ids["bos_token_id"],
                      eos_token_id=clip_ids["eos_token_id"], pad_token_id=clip_ids["eos_token_id"])
    return kwargs


def build_config(name: str, size: str = "paper", clip_ids: dict | None = None, **overrides):
    """The transformers config of ``name``; ``overrides`` are preprocessing sizes or config attributes."""
    shapes = {k: v for k, v in overrides.items() if k in SHAPE_KEYS}
    attributes = {k: v for k, v in overrides.items() if k not in SHAPE_KEYS}
    cls = model_class(name)
    return cls.config_class(**{**config_kwargs(name, size, clip_ids, **shapes), **attributes})


def seed_for(name: str, seed: int) -> int:
    """The torch seed a backbone is initialised with (the same for write_backbones and build_random_backbone)."""
    return seed * 1000 + BACKBONE_NAMES.index(name)


def build_random_backbone(name: str, size: str = "paper", seed: int = 0, *, device=None, clip_ids: dict | None = None,
                          **shape_overrides):
    """A random-init ``transformers.PreTrainedModel`` of backbone ``name`` at ``size``, in eval mode.

    ``shape_overrides``: preprocessing sizes (``frame_size``, ``video_frames``, ``image_size``, ``mel_bins``,
    ``audio_frames``; defaults ``DEFAULT_SHAPES``) and/or config attributes (e.g. ``num_hidden_layers=2`` for a
    small model of the same patch geometry). ``device="meta"`` builds it without memory (shapes and parameter
    counts only). The weights equal those ``write_backbones`` saves for the same name, size, seed and shapes
    (global RNG state is left untouched). A tiny CLIP needs ``clip_ids`` (see ``config_kwargs``).
    Another ``device`` builds on the CPU and moves the model (the same weights everywhere); to initialise on
    a GPU directly (seconds instead of ~2 CPU-minutes for the paper-size DINOv3; other random weights), call
    it inside ``with torch.device("cuda"):`` without ``device``, as benchmarks/gpu_check.py does.
    """
    import torch

    config = build_config(name, size, clip_ids, **shape_overrides)
    cls = model_class(name)
    if device is not None and torch.device(device).type == "meta":
        with torch.device("meta"):
            return cls(config).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(name, seed))
        model = cls(config).eval()
    return model.to(device) if device is not None else model


def token_count(name: str, config, frame_size: int | None = None, video_frames: int | None = None,
                image_size: int | None = None) -> int | None:
    """Tokens one call of ``name`` returns per sample (per view for images), computed from its config.

    V-JEPA2: (frames / tubelet) x (frame / patch)^2 (no CLS); AST: f x t patches + 2 (CLS, distillation);
    ViT-likes: (image / patch)^2 + 1 CLS + registers; CLIP: None (one pooled embedding).
    """
    if name == "vjepa2":
        frame = frame_size or config.crop_size
        frames = video_frames or config.frames_per_clip
        return (frames // config.tubelet_size) * (frame // config.patch_size) ** 2
    if name == "ast":
        f = (config.num_mel_bins - config.patch_size) // config.frequency_stride + 1
        t = (config.max_length - config.patch_size) // config.time_stride + 1
        return f * t + 2
    if name == "clip":
        return None
    side = image_size or config.image_size
    return (side // config.patch_size) ** 2 + 1 + int(getattr(config, "num_register_tokens", 0) or 0)
