"""Numeric precision of a job, one place for every method: frozen backbones, trained heads, TF32.

Config (section ``train``): ``backbone_precision`` (fp32 | bf16) for every frozen encoder
(Causal-FiLM's V-JEPA2 / AST / DINOv3 / CLIP, M3DM's ViT, Dinomaly's DINOv2), ``mixed_precision`` +
``amp_dtype`` for the trained heads (``autocast_context`` in the Trainer), ``allow_tf32`` for fp32
matmuls and convolutions. All of it is CUDA only: on the CPU everything runs in fp32 whatever the
config says, and ``precision_record`` says so in the run's metadata and the fairness table.

Backbone calls go through ``backbone_autocast(device, train_cfg)``; their outputs are cast back to
fp32 (``as_fp32``) so caches, banks and heads see fp32 tensors either way. A job calls
``configure_precision(device, train_cfg)`` once (the runner and the feature build do): it applies
TF32 and makes that ``train_cfg`` the default of ``backbone_autocast(device)``, so an encoder buried
in a model (M3DM's ViT, Dinomaly's DINOv2) needs only ``with backbone_autocast(x.device):``.
"""

from __future__ import annotations

import contextlib

import torch

BACKBONE_DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def _device(device) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def backbone_dtype(device, train_cfg: dict) -> str:
    """The dtype the frozen backbones run in on ``device``: 'bf16' (CUDA + backbone_precision bf16) or 'fp32'."""
    wanted = (train_cfg or {}).get("backbone_precision", "fp32")
    if wanted not in BACKBONE_DTYPES:
        raise ValueError(f"train.backbone_precision must be one of {sorted(BACKBONE_DTYPES)}, got '{wanted}'")
    return wanted if _device(device).type == "cuda" else "fp32"


_JOB_TRAIN_CFG: dict = {}  # the train section given to configure_precision (this process's job)


def configure_precision(device, train_cfg: dict) -> None:
    """Once per job: TF32 per ``train.allow_tf32`` and ``train_cfg`` as the default of ``backbone_autocast``."""
    _JOB_TRAIN_CFG.clear()
    _JOB_TRAIN_CFG.update({k: v for k, v in (train_cfg or {}).items()
                           if k in ("backbone_precision", "mixed_precision", "amp_dtype", "allow_tf32")})
    apply_matmul_precision(device, train_cfg)


def backbone_autocast(device, train_cfg: dict | None = None):
    """bf16 autocast for a frozen-backbone call where ``backbone_dtype`` is bf16; a no-op otherwise.
    Without ``train_cfg``: the one given to ``configure_precision`` (fp32 when none was)."""
    if backbone_dtype(device, _JOB_TRAIN_CFG if train_cfg is None else train_cfg) == "bf16":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def as_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """A backbone output as fp32 (unchanged when it already is)."""
    return tensor.float() if tensor.is_floating_point() and tensor.dtype != torch.float32 else tensor


def head_dtype(device, train_cfg: dict) -> str:
    """What the Trainer's autocast runs the heads in on ``device`` (``mixed_precision`` / ``amp_dtype``)."""
    cfg = train_cfg or {}
    if _device(device).type == "cuda" and cfg.get("mixed_precision", False):
        return cfg.get("amp_dtype", "fp16")
    return "fp32"


def tf32_allowed(device, train_cfg: dict) -> bool:
    return _device(device).type == "cuda" and bool((train_cfg or {}).get("allow_tf32", False))


def apply_matmul_precision(device, train_cfg: dict) -> None:
    """Allow (or forbid) TF32 in CUDA matmuls and cuDNN convolutions for this process, per ``train.allow_tf32``."""
    if _device(device).type != "cuda":
        return
    allowed = tf32_allowed(device, train_cfg)
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed


def precision_record(device, train_cfg: dict) -> dict:
    """What ran in which precision (run metadata ``precision``): effective values and the configured ones."""
    cfg = train_cfg or {}
    device = _device(device)
    record = {
        "device": device.type,
        "backbones": backbone_dtype(device, cfg),
        "heads": head_dtype(device, cfg),
        "tf32": tf32_allowed(device, cfg),
        "configured": {"backbone_precision": cfg.get("backbone_precision", "fp32"),
                       "mixed_precision": bool(cfg.get("mixed_precision", False)),
                       "amp_dtype": cfg.get("amp_dtype", "fp16"), "allow_tf32": bool(cfg.get("allow_tf32", False))},
    }
    if device.type != "cuda" and (record["configured"]["backbone_precision"] != "fp32"
                                  or record["configured"]["mixed_precision"] or record["configured"]["allow_tf32"]):
        record["note"] = f"reduced precision is CUDA only: ran in fp32 on {device.type}"
    return record


def precision_text(record: dict) -> str:
    """One line for the fairness table, e.g. 'backbones bf16, heads fp32, TF32 on (cuda)'."""
    return (f"backbones {record['backbones']}, heads {record['heads']}, TF32 {'on' if record['tf32'] else 'off'} "
            f"({record['device']})")
