"""Dinomaly's frozen-encoder outputs, computed once per split and shared by every seed and protocol.

Dinomaly trains only its bottleneck and decoder; the DINOv2-reg encoder is frozen and its inputs are
deterministic (resize, centre crop, ImageNet normalisation, no augmentation), so what the head reads
from it is the same in every epoch and every job (issue 11, item 2). Per run and image slot the cache
holds exactly that:

- ``tokens``: the fused target blocks, the bottleneck's input ``(N, T, D)`` (with the CLS and
  register tokens when ``dinomaly.decode_prefix_tokens``);
- ``targets``: each layer group's encoder features, patch tokens only ``(N, G, P, D)``;
- ``num_images``: the run's real images (slots past it are zeros and never read).

Layout: ``<results>/features/dinomaly/<dir key>/<split>.{tokens,targets,num_images}.npy`` (runs in
manifest order, float32 or ``train.feature_cache_dtype`` fp16, written batch by batch into memory maps, read memory-mapped) and a JSON
sidecar ``<split>.tokens.json`` with the key and the sample ids and labels. The folder is named by the
config values the outputs depend on (encoder, image sizes, layer groups, token handling, data
selection and a synthetic dataset's generator settings, backbone precision, storage dtype); the key adds the content of the encoder's files and of the manifest.
Stale-cache protection as for Causal-FiLM's features (``weldfilm.features.cache_is_current``): a
cache whose sidecar key differs is rebuilt, never read. Jobs that want the same cache at the same
time take a lock: one builds, the others wait and read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from weldfilm.errors import CheckpointError
from weldfilm.paths import DATA_KEYS, directory_digest, encoder_cache_dir, file_digest, manifest_path, sidecar_of
from weldfilm.io import stable_hash, write_json
from weldfilm.npy_store import NpyWriter

FORMAT_VERSION = 1
FIELDS = ("tokens", "targets", "num_images")
SECTION_KEYS = ("resize", "crop_size", "layer_groups", "decode_prefix_tokens")


def cache_spec(cfg: dict) -> dict:
    """Every config value the cached encoder outputs depend on (config only)."""
    spec = {
        "format": FORMAT_VERSION,
        "encoder": {k: cfg["backbones"].get(k) for k in ("source", "tiny_seed", "dinomaly_encoder")},
        "dinomaly": {k: cfg["dinomaly"][k] for k in SECTION_KEYS},
        "num_angles": cfg["preprocess"]["num_angles"],
        "data": {k: cfg["data"].get(k) for k in DATA_KEYS},
        "backbone_precision": cfg["train"].get("backbone_precision", "fp32"),
        "storage_dtype": storage_dtype(cfg),
    }
    if cfg["data"].get("source") == "synthetic":  # regenerated data keeps its run names (as weldfilm.paths)
        spec["synthetic"] = {k: v for k, v in cfg.get("synthetic", {}).items() if k != "workers"}
    return spec


def storage_dtype(cfg: dict) -> str:
    """``train.feature_cache_dtype`` (fp32 | fp16), as for Causal-FiLM's feature cache; served as float32."""
    return cfg["train"].get("feature_cache_dtype", "fp32")


def cache_dir(cfg: dict) -> Path:
    return encoder_cache_dir(cfg["results"], "dinomaly", stable_hash(cache_spec(cfg)))


def cache_paths(cfg: dict, split: str) -> dict[str, Path]:
    """``{field: .npy path}`` and ``"sidecar"`` of one split."""
    folder = cache_dir(cfg)
    paths = {field: folder / f"{split.lower()}.{field}.npy" for field in FIELDS}
    return {**paths, "sidecar": sidecar_of(paths["tokens"])}


def cache_key(cfg: dict) -> str:
    """The key a cache must carry: the config spec + the content of the encoder folder and of the manifest."""
    content = {"spec": cache_spec(cfg), "encoder_files": directory_digest(cfg["backbones"]["dinomaly_encoder"]),
               "manifest": file_digest(manifest_path(cfg))}
    return stable_hash(content, length=20)


def is_current(paths: dict[str, Path], key: str) -> bool:
    """Every file of the split is there and the sidecar carries ``key``."""
    from weldfilm.features import cache_is_current

    return all(paths[f].is_file() for f in FIELDS) and cache_is_current(paths["tokens"], key)


def build(paths: dict[str, Path], key: str, split: str, head, loader, device, desc: str,
          dtype: str = "fp32") -> None:
    """Encode every run of ``loader`` (in order) with ``head.encode_runs`` into the split's files, atomically."""
    from weldfilm.training import move_to_device
    from weldfilm.training.progress import progress

    stored = np.float16 if dtype == "fp16" else np.float32
    writer = NpyWriter({field: paths[field] for field in FIELDS}, len(loader.dataset),
                       dtypes={"tokens": stored, "targets": stored, "num_images": np.int64},
                       what=f"Dinomaly encoder cache {paths['tokens']}")
    sample_ids: list[str] = []
    labels: list[int] = []
    try:
        for batch in progress(loader, desc, unit="batch"):
            batch = move_to_device(batch, device)
            with torch.no_grad():
                encoded = head.encode_runs(batch)
            writer.write({field: encoded[field].detach().cpu().numpy() for field in FIELDS})
            sample_ids += list(batch["sample_id"])
            labels += torch.as_tensor(batch["label"]).reshape(-1).tolist()
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    write_json(paths["sidecar"], {"key": key, "split": split.lower(), "sample_ids": sample_ids, "labels": labels,
                                  "format": FORMAT_VERSION})


class EncodedRuns(torch.utils.data.Dataset):
    """The cached encoder outputs of one split, memory-mapped; ``dataset[i]`` is run ``i``'s slots."""

    def __init__(self, paths: dict[str, Path], expected_key: str):
        sidecar = paths["sidecar"]
        if not sidecar.is_file() or not all(paths[f].is_file() for f in FIELDS):
            raise CheckpointError(f"Dinomaly encoder cache {paths['tokens'].parent} lacks files of "
                                  f"{sidecar.stem}; delete the folder and re-run")
        self.meta = json.loads(sidecar.read_text())
        if self.meta.get("key") != expected_key:
            raise CheckpointError(f"Dinomaly encoder cache {sidecar} is stale (key {self.meta.get('key')}, this "
                                  f"config needs {expected_key}): encoder, sizes, layer groups or data changed")
        self.arrays = {field: np.load(paths[field], mmap_mode="r") for field in FIELDS}
        self.sample_ids: list[str] = list(self.meta["sample_ids"])
        self.labels = np.asarray(self.meta["labels"], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, index: int) -> dict:
        return {"encoded_tokens": torch.from_numpy(np.array(self.arrays["tokens"][index], dtype=np.float32)),
                "encoded_targets": torch.from_numpy(np.array(self.arrays["targets"][index], dtype=np.float32)),
                "num_images": int(self.arrays["num_images"][index]), "label": int(self.labels[index]),
                "sample_id": self.sample_ids[index]}
