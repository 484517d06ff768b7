"""M3DM's frozen encoder outputs, computed once per split and shared by every run that can use them.

M3DM trains nothing: its RGB ViT and its point transformer are frozen, so their patch features of a
split are the same in every job that asks for them. They are stored once per split (issue 11, item 2)
in two caches, each keyed by exactly what shapes it:

- ``rgb``: the DINO ViT patch features ``(N, P_rgb, C_rgb)``; key = the RGB backbone (path and file
  content), ``image_size``, ``rgb_final_norm``, ``train.backbone_precision`` (when not fp32), the
  data selection, a synthetic dataset's generator settings and the manifest. Shared by every
  seed and protocol.
- ``point``: the point features on their patch grid ``(N, P_pt, C_pt)``; key = the point transformer's
  sizes, its weights (the Point-MAE checkpoint's content, or the run seed of the random init),
  ``cloud_size``, ``point_grid``, the data selection, a synthetic dataset's generator settings and
  the manifest. Shared by both protocols of
  a seed (by every run when a Point-MAE checkpoint is given).

Layout: ``<results>/features/m3dm_<kind>/<dir key>/<split>.npy`` (every run of the split in manifest
order, float32, written row block by row block into a memory map, so building needs memory for one
batch only, and read memory-mapped) and a JSON sidecar with the key, the sample ids and the patch
grids. Stale-cache protection as for Causal-FiLM's feature cache (``weldfilm.features.cache_is_current``):
a cache whose sidecar key differs from the config's is rebuilt, never read. Jobs that want the same
cache at the same time take a lock on it: one builds, the others wait and read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from weldfilm.paths import DATA_KEYS, directory_digest, encoder_cache_dir, file_digest, manifest_path, sidecar_of
from weldfilm.io import stable_hash, write_json

FORMAT_VERSION = 1
KINDS = ("rgb", "point")
RGB_KEYS = ("image_size", "rgb_final_norm")
POINT_KEYS = ("cloud_size", "point_trans_dim", "point_depth", "point_heads", "point_group_size", "point_num_groups",
              "point_taps", "point_grid", "point_mae_checkpoint")


def encoder_spec(cfg: dict, kind: str, seed: int) -> dict:
    """Every config value the ``kind`` features depend on (config only)."""
    p = cfg["m3dm"]
    spec = {"format": FORMAT_VERSION, "kind": kind, "data": {k: cfg["data"].get(k) for k in DATA_KEYS}}
    if kind == "rgb":
        spec.update({k: p[k] for k in RGB_KEYS})
        spec["backbone"] = {k: cfg["backbones"].get(k) for k in ("source", "tiny_seed", "m3dm_rgb")}
        precision = cfg["train"].get("backbone_precision", "fp32")
        if precision != "fp32":  # the ViT runs under backbone_autocast (absent for fp32: existing keys stay)
            spec["backbone_precision"] = precision
    elif kind == "point":
        spec.update({k: p[k] for k in POINT_KEYS})
        spec["random_init_seed"] = None if p["point_mae_checkpoint"] else int(seed)
    else:
        raise ValueError(f"M3DM encoder cache kind must be one of {KINDS}, got {kind!r}")
    if cfg["data"].get("source") == "synthetic":  # regenerated data keeps its run names (as weldfilm.paths)
        spec["synthetic"] = {k: v for k, v in cfg.get("synthetic", {}).items() if k != "workers"}
    return spec


def cache_dir(cfg: dict, kind: str, seed: int) -> Path:
    return encoder_cache_dir(cfg["results"], f"m3dm_{kind}", stable_hash(encoder_spec(cfg, kind, seed)))


def cache_path(cfg: dict, kind: str, seed: int, split: str) -> Path:
    return cache_dir(cfg, kind, seed) / f"{split.lower()}.npy"


def cache_key(cfg: dict, kind: str, seed: int) -> str:
    """The key a cache must carry: the config spec + the content of the weights and of the manifest."""
    if kind == "rgb":
        weights = directory_digest(cfg["backbones"]["m3dm_rgb"])
    else:
        checkpoint = cfg["m3dm"]["point_mae_checkpoint"]
        weights = file_digest(Path(checkpoint)) if checkpoint and Path(checkpoint).is_file() else None
    content = {"spec": encoder_spec(cfg, kind, seed), "weights": weights, "manifest": file_digest(manifest_path(cfg))}
    return stable_hash(content, length=20)


def is_current(path: Path, key: str) -> bool:
    from weldfilm.features import cache_is_current

    return cache_is_current(path, key)


def write_sidecar(path: Path, key: str, split: str, sample_ids: list[str], shapes: dict) -> None:
    write_json(sidecar_of(path), {"key": key, "split": split.lower(), "sample_ids": list(sample_ids),
                                  "shapes": shapes, "format": FORMAT_VERSION})


def open_cache(path: Path) -> tuple[np.ndarray, dict]:
    """The memory-mapped features ``(N, P, C)`` and the sidecar of a current cache."""
    return np.load(path, mmap_mode="r"), json.loads(sidecar_of(path).read_text())
