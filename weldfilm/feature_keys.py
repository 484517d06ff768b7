"""Feature-cache keys: which config values and files a cache depends on (imports no torch).

``feature_dir_key(cfg)`` depends on the config only and names the folder ``<results>/features/<key>/``,
so the workflow computes it while parsing the Snakefile; ``cache_key(cfg)`` adds the content of the
backbone folders and of the manifest and is what a cache must match.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from weldfilm.errors import ConfigError
from weldfilm.io import stable_hash

FORMAT_VERSION = 1
TEXT_EMBEDDING = "__text_embedding__"
BACKBONE_KEYS = ("video", "audio", "image", "clip")
DATA_KEYS = ("source", "root", "paper_manifest", "split_seed", "exclude_runs", "allow_missing_images")
CAUSAL_FILM_MODALITIES = ("video", "post_weld_images", "audio", "sensor")
_SMALL_FILE = 1 << 20


def feature_spec(cfg: dict) -> dict:
    """Every config value the cached features depend on."""
    return {
        "format": FORMAT_VERSION,
        "backbones": {k: cfg["backbones"].get(k) for k in ("source", "tiny_seed", *BACKBONE_KEYS)},
        "preprocess": cfg["preprocess"],
        "result_layers": list(cfg["causal_film"]["result_layers"]),
        "text_prompt": cfg["loss"].get("text_prompt", "a normal weld"),
        "data": {k: cfg["data"].get(k) for k in DATA_KEYS},
        "storage_dtype": cfg["train"].get("feature_cache_dtype", "fp32"),
    }


def feature_dir_key(cfg: dict) -> str:
    """Folder name of this config's caches (config only; computable before the inputs exist)."""
    return stable_hash(feature_spec(cfg))


def default_feature_dir(cfg: dict) -> Path:
    return Path(cfg["results"]) / "features" / feature_dir_key(cfg)


def cache_file(feature_dir, split: str) -> Path:
    return Path(feature_dir) / f"{split.lower()}.safetensors"


def sidecar_of(path) -> Path:
    return Path(path).with_suffix(".json")


def file_digest(path: Path) -> str:
    """sha256 of a file; for files over 1 MiB of its size, first and last MiB (fast on multi-GB weights)."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(str(size).encode())
    with open(path, "rb") as handle:
        if size <= 2 * _SMALL_FILE:
            digest.update(handle.read())
        else:
            digest.update(handle.read(_SMALL_FILE))
            handle.seek(size - _SMALL_FILE)
            digest.update(handle.read())
    return digest.hexdigest()[:16]


def directory_digest(directory) -> dict | None:
    """``{relative file: digest}`` of a backbone folder (None for an unset one)."""
    if directory is None:
        return None
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"backbone folder {directory} does not exist (run `weldfilm tiny-backbones` or fix backbones.*)")
    return {p.relative_to(directory).as_posix(): file_digest(p) for p in sorted(directory.rglob("*")) if p.is_file()}


def manifest_path(cfg: dict) -> Path:
    return Path(cfg["results"]) / "data" / "manifest.csv"


def cache_key(cfg: dict) -> str:
    """The key a cache must carry: config spec + content of the backbone folders and of the manifest."""
    manifest = manifest_path(cfg)
    if not manifest.is_file():
        raise ConfigError(f"manifest {manifest} does not exist; run `weldfilm manifest` first")
    content = {
        "spec": feature_spec(cfg),
        "backbone_files": {k: directory_digest(cfg["backbones"].get(k)) for k in BACKBONE_KEYS},
        "manifest": file_digest(manifest),
    }
    return stable_hash(content, length=20)
