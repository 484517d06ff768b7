"""Feature cache: frozen-backbone outputs of a split computed once and served to the Causal-FiLM head.

``build_feature_cache(cfg, split, out_path)`` runs ``FrozenBackbones.extract`` over the split (no
augmentation) and writes ``<split>.safetensors`` (every tensor of the feature batch, concatenated over
samples, + the frozen CLIP text embedding of ``loss.text_prompt``) and a JSON sidecar
``<split>.json`` (sample ids, dims, token shapes, backbone fingerprints and the cache key).
``FeatureDataset(path, expected_key)`` serves feature batches and refuses a stale cache.

Two hashes: ``feature_dir_key(cfg)`` depends on the config only (backbone paths, preprocessing, result
layers, data selection, prompt, storage dtype) and names the folder ``<results>/features/<key>/``, so
the workflow can compute it before anything exists; ``cache_key(cfg)`` adds the content of the backbone
folders and of the manifest and is what a cache must match. Computing it imports no transformers.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from weldfilm.errors import CheckpointError, ConfigError
from weldfilm.io import atomic_path, provenance, write_json

from weldfilm.feature_keys import (  # noqa: F401 (re-exported for callers of weldfilm.features)
    CAUSAL_FILM_MODALITIES,
    TEXT_EMBEDDING,
    cache_file,
    cache_key,
    default_feature_dir,
    directory_digest,
    feature_dir_key,
    feature_spec,
    file_digest,
    manifest_path,
    sidecar_of,
)


# ---------------------------------------------------------------------------------------------- build
def build_feature_cache(cfg: dict, split: str, out_path, backbones=None, device=None) -> Path:
    """Extract the split's features with the frozen backbones and write ``out_path`` (+ sidecar) atomically."""
    from weldfilm.methods import make_loader, resolve_device

    out_path = Path(out_path)
    if out_path.suffix != ".safetensors":
        raise ConfigError(f"feature cache path {out_path} must end in .safetensors")
    device = torch.device(device) if device is not None else resolve_device(cfg["train"])
    if backbones is None:
        from weldfilm.models.backbones import FrozenBackbones

        backbones = FrozenBackbones.from_config(cfg, device)
    from weldfilm.data.dataset import dataset_from_config

    dataset = dataset_from_config(cfg, split, augment=False, modalities=CAUSAL_FILM_MODALITIES)
    loader = make_loader(dataset, cfg["train"].get("eval_batch_size", 32), shuffle=False,
                         num_workers=cfg["train"].get("num_workers", 0))
    parts: dict[str, list[torch.Tensor]] = defaultdict(list)
    sample_ids: list[str] = []
    for batch in loader:
        for name, value in backbones.extract(batch).items():
            if name == "sample_id":
                sample_ids.extend(value)
            else:
                parts[name].append(torch.as_tensor(value).detach().cpu())
    half = cfg["train"].get("feature_cache_dtype", "fp32") == "fp16"
    tensors = {}
    for name, chunks in parts.items():
        tensor = torch.cat(chunks)
        if half and name.endswith("_tokens") and tensor.is_floating_point():
            tensor = tensor.half()
        tensors[name] = tensor.contiguous()
    text = {"prompt": cfg["loss"].get("text_prompt", "a normal weld"), "available": backbones.clip_model is not None}
    if text["available"]:
        tensors[TEXT_EMBEDDING] = backbones.text_embedding(text["prompt"]).detach().float().cpu().contiguous()
    sidecar = {
        "key": cache_key(cfg),
        "dir_key": feature_dir_key(cfg),
        "split": split.lower(),
        "sample_ids": sample_ids,
        "fields": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in tensors.items()},
        "storage_dtype": "fp16" if half else "fp32",
        "dims": backbones.dims,
        "token_shapes": backbones.token_shapes(),
        "fingerprint": backbones.fingerprint(),
        "text": text,
        "provenance": provenance(feature_spec(cfg)),
    }
    write_json(sidecar_of(out_path), sidecar)
    with atomic_path(out_path) as tmp:
        save_file(tensors, str(tmp), metadata={"key": sidecar["key"], "split": split.lower()})
    return out_path


def cache_is_current(path, key: str) -> bool:
    """True when ``path`` and its sidecar exist and the sidecar carries ``key``."""
    path, sidecar = Path(path), sidecar_of(path)
    if not (path.is_file() and sidecar.is_file()):
        return False
    try:
        return json.loads(sidecar.read_text()).get("key") == key
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def ensure_feature_cache(cfg: dict, split: str, feature_dir=None, backbones=None, device=None) -> Path:
    """The cache file of ``split`` below ``feature_dir`` (default ``<results>/features/<key>``), built if absent or stale."""
    path = cache_file(feature_dir or default_feature_dir(cfg), split)
    if cache_is_current(path, cache_key(cfg)):
        return path
    return build_feature_cache(cfg, split, path, backbones=backbones, device=device)


# ---------------------------------------------------------------------------------------------- serve
class FeatureDataset(torch.utils.data.Dataset):
    """The cached feature batches of one split; ``dataset[list_of_indices]`` returns a whole batch."""

    def __init__(self, path, expected_key: str | None):
        self.path = Path(path)
        sidecar = sidecar_of(self.path)
        if not self.path.is_file() or not sidecar.is_file():
            raise CheckpointError(f"feature cache {self.path} (or its sidecar {sidecar.name}) does not exist; "
                                  "run `weldfilm features --split ... --out ...`")
        try:
            self.meta = json.loads(sidecar.read_text())
            with safe_open(str(self.path), framework="pt") as handle:
                stored_key = (handle.metadata() or {}).get("key")
                self.tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        except Exception as exc:
            raise CheckpointError(f"feature cache {self.path} is corrupt ({type(exc).__name__}: {exc}); delete it and "
                                  "re-run `weldfilm features`") from exc
        if stored_key != self.meta.get("key"):
            raise CheckpointError(f"feature cache {self.path} and its sidecar disagree; delete both and re-run "
                                  "`weldfilm features`")
        if expected_key is not None and stored_key != expected_key:
            raise CheckpointError(f"features in {self.path} are stale (key {stored_key}, this config needs "
                                  f"{expected_key}): backbones, preprocessing, result layers or data changed; "
                                  "re-run `weldfilm features`")
        self.text_embedding = self.tensors.pop(TEXT_EMBEDDING, None)
        self.sample_ids: list[str] = list(self.meta["sample_ids"])
        self.labels = self.tensors["label"].numpy().astype(np.int64)
        self.dims = self.meta["dims"]

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, index):
        """One sample (int index) or a batch (list/tensor of indices); tokens served as float32."""
        single = isinstance(index, (int, np.integer))
        idx = torch.as_tensor([index] if single else list(index), dtype=torch.long)
        batch = {}
        for name, tensor in self.tensors.items():
            value = tensor[idx]
            batch[name] = value.float() if value.dtype == torch.float16 else value
        batch["sample_id"] = [self.sample_ids[i] for i in idx.tolist()]
        if single:
            batch = {k: (v[0] if k != "sample_id" else v[0]) for k, v in batch.items()}
        return batch


def feature_loader(dataset, batch_size: int, shuffle: bool, seed: int = 0) -> torch.utils.data.DataLoader:
    """Batches of a FeatureDataset (or a Subset of one) fetched with one indexing op per batch."""
    from weldfilm.training import seeded_generator

    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    positions = list(dataset.indices) if isinstance(dataset, torch.utils.data.Subset) else list(range(len(dataset)))
    generator = seeded_generator(seed)
    order = (torch.utils.data.RandomSampler(positions, generator=generator) if shuffle
             else torch.utils.data.SequentialSampler(positions))
    batches = torch.utils.data.BatchSampler(order, batch_size, drop_last=False)

    class _Positions(torch.utils.data.Dataset):  # maps positions of the subset to rows of the cache
        def __len__(self):
            return len(positions)

        def __getitem__(self, batch_positions):
            return base[[positions[p] for p in batch_positions]]

    return torch.utils.data.DataLoader(_Positions(), sampler=batches, batch_size=None, collate_fn=lambda b: b)


# ---------------------------------------------------------------------------------------------- CLI
def add_cli_arguments(parser) -> None:
    parser.add_argument("--config", default=None, help="config.yaml (default: the project's)")
    parser.add_argument("--split", required=True, choices=["train", "val", "test"])
    parser.add_argument("--out", required=True, help="output .safetensors path (a .json sidecar is written beside it)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted config overrides")


def cli(args) -> int:
    from weldfilm.config import load_config, parse_set_args

    cfg = load_config(args.config, parse_set_args(args.set))
    path = build_feature_cache(cfg, args.split, args.out)
    print(f"wrote {path} ({len(json.loads(sidecar_of(path).read_text())['sample_ids'])} samples)")
    return 0
