"""Feature cache: frozen-backbone outputs of a split computed once and served to the Causal-FiLM head.

``build_feature_cache(cfg, split, out_path)`` runs ``FrozenBackbones.extract`` over the split (no
augmentation) and writes ``<split>.safetensors`` (every tensor of the feature batch, concatenated over
samples, + the frozen CLIP text embedding of ``loss.text_prompt``) and a JSON sidecar
``<split>.json`` (sample ids, dims, token shapes, backbone fingerprints and the cache key). The file
is written batch by batch as the features are computed (memory bounded whatever the split size), in
the safetensors layout (``safetensors.safe_open`` reads it). ``FeatureDataset(path, expected_key)``
serves feature batches from a memory map of it and refuses a stale cache.

Two hashes: ``feature_dir_key(cfg)`` depends on the config only (backbone paths, preprocessing, result
layers, data selection, prompt, storage dtype) and names the folder ``<results>/features/<key>/``, so
the workflow can compute it before anything exists; ``cache_key(cfg)`` adds the content of the backbone
folders and of the manifest and is what a cache must match. Computing it imports no transformers.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch

from weldfilm.errors import CheckpointError, ConfigError
from weldfilm.io import atomic_path, provenance, write_json
from weldfilm.training.precision import backbone_dtype
from weldfilm.training.progress import progress

from weldfilm.paths import (  # noqa: F401 (re-exported for callers of weldfilm.features)
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


# ---------------------------------------------------------------------------------------- file layout
# safetensors dtype names <-> numpy / torch (what a feature batch holds)
_DTYPES = {"F32": (np.float32, torch.float32), "F16": (np.float16, torch.float16), "I64": (np.int64, torch.int64),
           "I32": (np.int32, torch.int32), "U8": (np.uint8, torch.uint8), "BOOL": (np.bool_, torch.bool)}
_NAME_OF = {torch_dtype: name for name, (_, torch_dtype) in _DTYPES.items()}


class StreamingSafetensors:
    """A ``.safetensors`` file written block of rows by block of rows, never held whole in memory.

    ``fields`` gives every tensor's full shape and dtype up front; the header (the safetensors layout:
    8-byte little-endian header size, JSON header, then each tensor's bytes in turn) is written and the
    file sized at once, then ``write_rows`` puts each batch's rows in place with plain file writes (no
    memory map: written pages stay in the page cache, not in this process's resident memory).
    """

    def __init__(self, path, fields: dict[str, tuple[tuple[int, ...], torch.dtype]], metadata: dict[str, str]):
        self.path = Path(path)
        self.layout: dict[str, tuple[int, int]] = {}  # name -> (first byte, bytes per row)
        header, offset = {"__metadata__": metadata}, 0
        for name, (shape, dtype) in fields.items():
            if dtype not in _NAME_OF:
                raise ConfigError(f"feature '{name}' has dtype {dtype}, which the feature cache cannot store")
            nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": _NAME_OF[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self.layout[name] = (offset, nbytes // shape[0] if shape and shape[0] else nbytes)
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # data aligned to 8 bytes, as safetensors writes it
        self.data_start = 8 + len(blob)
        self.handle = open(self.path, "wb+")
        self.handle.write(struct.pack("<Q", len(blob)) + blob)
        self.handle.truncate(self.data_start + offset)

    def write_rows(self, name: str, first_row: int, tensor: torch.Tensor) -> None:
        start, row_bytes = self.layout[name]
        array = np.ascontiguousarray(tensor.detach().cpu().numpy())
        self.handle.seek(self.data_start + start + first_row * row_bytes)
        self.handle.write(memoryview(array).cast("B"))

    def close(self) -> None:
        self.handle.close()


def read_safetensors_layout(path) -> tuple[int, dict, dict]:
    """``(first data byte, {name: {dtype, shape, data_offsets}}, metadata)`` of a safetensors file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"{size} bytes, no safetensors header")
        (length,) = struct.unpack("<Q", head)
        if 8 + length > size:
            raise ValueError(f"header of {length} bytes in a file of {size}")
        header = json.loads(handle.read(length))
    metadata = header.pop("__metadata__", None) or {}
    end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
    if 8 + length + end != size:
        raise ValueError(f"tensors end at byte {8 + length + end}, the file has {size}")
    return 8 + length, header, metadata


# ---------------------------------------------------------------------------------------------- build
def build_feature_cache(cfg: dict, split: str, out_path, backbones=None, device=None) -> Path:
    """Extract the split's features with the frozen backbones and write ``out_path`` (+ sidecar) atomically.

    Each batch's features are written into the file as they are computed (``StreamingSafetensors``):
    the build's memory does not grow with the split.
    """
    from weldfilm.training.loaders import make_loader, resolve_device
    from weldfilm.training.precision import configure_precision

    out_path = Path(out_path)
    if out_path.suffix != ".safetensors":
        raise ConfigError(f"feature cache path {out_path} must end in .safetensors")
    device = torch.device(device) if device is not None else resolve_device(cfg["train"])
    configure_precision(device, cfg["train"])
    if backbones is None:
        from weldfilm.models.backbones import FrozenBackbones

        backbones = FrozenBackbones.from_config(cfg, device)
    from weldfilm.data.dataset import dataset_from_config

    dataset = dataset_from_config(cfg, split, augment=False, modalities=CAUSAL_FILM_MODALITIES)
    total = len(dataset)
    if total == 0:
        raise ConfigError(f"split {split.upper()} of the manifest {manifest_path(cfg)} has no run: nothing to cache "
                          f"for {out_path}; check data.* and the manifest")
    loader = make_loader(dataset, cfg["train"].get("eval_batch_size", 32), shuffle=False,
                         num_workers=cfg["train"].get("num_workers", 0))
    half = cfg["train"].get("feature_cache_dtype", "fp32") == "fp16"
    text = {"prompt": cfg["loss"].get("text_prompt", "a normal weld"), "available": backbones.clip_model is not None}
    text_embedding = (backbones.text_embedding(text["prompt"]).detach().float().cpu().contiguous()
                      if text["available"] else None)
    key = cache_key(cfg)
    sample_ids: list[str] = []
    fields: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    with atomic_path(out_path) as tmp:
        writer = None
        try:
            for batch in progress(loader, f"features {split.lower()} -> {out_path.parent.name}", unit="batch"):
                with torch.no_grad():
                    extracted = backbones.extract(batch)
                ids = list(extracted.pop("sample_id"))
                tensors = {name: _stored(name, value, half) for name, value in extracted.items()}
                if writer is None:
                    fields = {name: ((total, *t.shape[1:]), t.dtype) for name, t in tensors.items()}
                    if text_embedding is not None:
                        fields[TEXT_EMBEDDING] = (tuple(text_embedding.shape), text_embedding.dtype)
                    writer = StreamingSafetensors(tmp, fields, {"key": key, "split": split.lower()})
                    if text_embedding is not None:
                        writer.write_rows(TEXT_EMBEDDING, 0, text_embedding)
                for name, tensor in tensors.items():
                    expected = fields.get(name)
                    if expected is None or (tuple(tensor.shape[1:]), tensor.dtype) != (expected[0][1:], expected[1]):
                        raise ConfigError(f"{out_path}: batch {len(sample_ids)}: feature '{name}' is "
                                          f"{tuple(tensor.shape[1:])} {tensor.dtype}, the first batch gave "
                                          f"{expected and (expected[0][1:], expected[1])}; inputs of one split must "
                                          "have one shape (check preprocess.*)")
                    writer.write_rows(name, len(sample_ids), tensor)
                sample_ids.extend(ids)
        finally:
            if writer is not None:
                writer.close()
        if len(sample_ids) != total:
            raise ConfigError(f"{out_path}: the loader gave {len(sample_ids)} runs of split {split.upper()}, "
                              f"the dataset has {total}")
        sidecar = {
            "key": key,
            "dir_key": feature_dir_key(cfg),
            "split": split.lower(),
            "sample_ids": sample_ids,
            "fields": {k: {"shape": list(shape), "dtype": str(dtype).replace("torch.", "")}
                       for k, (shape, dtype) in fields.items()},
            "storage_dtype": "fp16" if half else "fp32",
            "backbone_precision": backbone_dtype(device, cfg["train"]),
            "dims": backbones.dims,
            "token_shapes": backbones.token_shapes(),
            "fingerprint": backbones.fingerprint(),
            "text": text,
            "provenance": provenance(feature_spec(cfg)),
        }
    # after the data file is in place: a kill in between leaves an old sidecar that no key matches (the cache
    # is rebuilt), never a new sidecar over old data (cache_is_current would accept it and every reader refuse it)
    write_json(sidecar_of(out_path), sidecar)
    return out_path


def _stored(name: str, value, half: bool) -> torch.Tensor:
    """A feature of a batch as it is stored: on the CPU, contiguous; tokens as fp16 with ``half``."""
    tensor = torch.as_tensor(value).detach().cpu()
    if half and name.endswith("_tokens") and tensor.is_floating_point():
        tensor = tensor.half()
    return tensor.contiguous()


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
    """The cached feature batches of one split, memory-mapped; ``dataset[list_of_indices]`` returns a whole batch.

    Only the rows a batch asks for are read from the file (the page cache keeps what is read often),
    so opening a split costs no memory in proportion to its size.
    """

    def __init__(self, path, expected_key: str | None):
        self.path = Path(path)
        sidecar = sidecar_of(self.path)
        if not self.path.is_file() or not sidecar.is_file():
            raise CheckpointError(f"feature cache {self.path} (or its sidecar {sidecar.name}) does not exist; "
                                  "run `weldfilm features --split ... --out ...`")
        try:
            self.meta = json.loads(sidecar.read_text())
            data_start, layout, metadata = read_safetensors_layout(self.path)
            stored_key = metadata.get("key")
            self.tensors = {name: _memmap(self.path, data_start, entry) for name, entry in layout.items()}
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
        text = self.tensors.pop(TEXT_EMBEDDING, None)
        self.text_embedding = torch.from_numpy(np.array(text)) if text is not None else None
        self.sample_ids: list[str] = list(self.meta["sample_ids"])
        self.labels = np.asarray(self.tensors["label"]).astype(np.int64)
        self.dims = self.meta["dims"]

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, index):
        """One sample (int index) or a batch (list/tensor of indices); tokens served as float32."""
        single = isinstance(index, (int, np.integer))
        rows = np.asarray([index] if single else list(index), dtype=np.int64)
        batch = {}
        for name, array in self.tensors.items():
            value = torch.from_numpy(np.ascontiguousarray(array[rows]))
            batch[name] = value.float() if value.dtype == torch.float16 else value
        batch["sample_id"] = [self.sample_ids[i] for i in rows.tolist()]
        if single:
            batch = {k: (v[0] if k != "sample_id" else v[0]) for k, v in batch.items()}
        return batch


def _memmap(path: Path, data_start: int, entry: dict) -> np.ndarray:
    """A read-only view of one stored tensor (an empty array for a tensor without elements)."""
    dtype = _DTYPES[entry["dtype"]][0]
    shape = tuple(entry["shape"])
    begin, end = entry["data_offsets"]
    if end - begin != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
        raise ValueError(f"tensor of shape {shape} {entry['dtype']} takes {end - begin} bytes")
    if end == begin:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin, shape=shape)


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
