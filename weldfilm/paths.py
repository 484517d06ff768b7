"""Every path below ``results:`` and the feature-cache keys, in one module without torch: the Snakefile
(workflow/rules/common.smk) and the package both import it, so a folder name is written once.

Folders: ``data/manifest.csv``, ``data/validation.json``, ``data/card/``, ``backbones/<dir>/<name>`` (tiny
backbones: ``TINY_BACKBONE_DIRS``), ``features/<key>/<split>.safetensors`` (the Causal-FiLM feature cache),
``inputs/<kind>/<split>.npy`` (decoded-input store), ``runs/<protocol>/<method>/seed<seed>``,
``ablations/<ablation>/seed<seed>``, ``paper/``, ``logs/<rule>/...``. Which runs have ablations and read the
feature cache comes from the method registry (``weldfilm.methods.REGISTRY``) through ``run_folder`` and
``run_feature_dir``.

Feature-cache keys: ``feature_dir_key(cfg)`` depends on the config only and names the folder
``<results>/features/<key>/``, so the workflow computes it while parsing the Snakefile; ``cache_key(cfg)``
adds the content of the backbone folders and of the manifest and is what a cache must match.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from weldfilm.errors import ConfigError
from weldfilm.io import stable_hash
from weldfilm.methods import ABLATION_METHOD, FEATURE_CACHE_METHODS

FORMAT_VERSION = 1
TEXT_EMBEDDING = "__text_embedding__"
BACKBONE_KEYS = ("video", "audio", "image", "clip")
DATA_KEYS = ("source", "root", "paper_manifest", "split_seed", "max_train_good_runs", "exclude_runs", "allow_missing_images")
CAUSAL_FILM_MODALITIES = ("video", "post_weld_images", "audio", "sensor")
_SMALL_FILE = 1 << 20


def data_identity(cfg: dict) -> dict:
    """The config values that say which runs a split holds and what their files contain: ``data`` (root,
    manifest, split, exclusions, missing images) and, on synthetic data, the generator's settings (same
    run names, other content when they change). The feature caches and the decoded-input store
    (weldfilm/data/store.py) both key on it."""
    out = {"data": {k: cfg["data"].get(k) for k in DATA_KEYS}}
    if cfg["data"].get("source") == "synthetic":
        out["synthetic"] = {k: v for k, v in cfg.get("synthetic", {}).items() if k != "workers"}
    return out


def feature_spec(cfg: dict) -> dict:
    """Every config value the cached features depend on."""
    spec = {
        "format": FORMAT_VERSION,
        "backbones": {k: cfg["backbones"].get(k) for k in ("source", "tiny_seed", *BACKBONE_KEYS)},
        "preprocess": cfg["preprocess"],
        "result_layers": list(cfg["causal_film"]["result_layers"]),
        "text_prompt": cfg["loss"].get("text_prompt", "a normal weld"),
        "storage_dtype": cfg["train"].get("feature_cache_dtype", "fp32"),
        **data_identity(cfg),
    }
    precision = cfg["train"].get("backbone_precision", "fp32")
    if precision != "fp32":  # (absent for fp32: the keys of existing fp32 caches stay as they were)
        spec["backbone_precision"] = precision
    return spec


def cached_splits(cfg: dict) -> tuple[str, ...]:
    """The splits a Causal-FiLM run with run config ``cfg`` reads from the feature cache.

    None without ``train.feature_cache``; never TRAIN when the run trains with augmentation (its
    backbones then run live on augmented TRAIN inputs, so a TRAIN cache would be built for no one).
    The method (``CausalFiLMMethod.uses_cache``) and the workflow (the caches a train job asks for)
    both decide with this function.
    """
    method = (cfg.get("run") or {}).get("method")
    if method is not None and method not in FEATURE_CACHE_METHODS:
        return ()  # only the registry's feature-cache methods (Causal-FiLM) read one
    if not cfg["train"].get("feature_cache", True):
        return ()
    augmented = bool(cfg["train"].get("use_augmentations", False))
    return ("val", "test") if augmented else ("train", "val", "test")


# Memory of a feature-cache build, measured 2026-12-02 on a 2-core CPU with tiny backbones and the
# default sizes (`python benchmarks/feature_memory.py --image-size 224 --batch-size 32`): 0.41 GB
# before the build (torch, transformers, backbones), 0.70 GB peak with a batch of 8 runs, 0.90 GB
# with 24 (+12.5 MB per run of a batch), so ~1.0 GB for a full batch of 32. The cache is streamed,
# so the split size adds nothing (`--inflate 16`: 0.42-0.44 GB growth for VAL of 8 and of 24 runs,
# where holding the split grew 0.51 -> 1.01 GB). Pretrained checkpoints add their weights (counted
# twice: a checkpoint file and the model it fills may both be resident while loading).
BUILD_PEAK_MB = 1000
BUILD_PEAK_MB_PER_BATCH_RUN = 12.5
BUILD_MEMORY_MARGIN = 2.0


def feature_build_mem_mb(cfg: dict) -> int:
    """``mem_mb`` of the job that builds one split's cache: the measured peak with its margin."""
    batch = int(cfg["train"].get("eval_batch_size", 32))
    peak = BUILD_PEAK_MB + BUILD_PEAK_MB_PER_BATCH_RUN * max(batch - 32, 0)
    if cfg["backbones"].get("source") == "pretrained":
        for key in BACKBONE_KEYS:
            folder = cfg["backbones"].get(key)
            if folder and Path(folder).is_dir():
                peak += 2 * sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 2**20
    return int(math.ceil(BUILD_MEMORY_MARGIN * peak / 100.0)) * 100


def feature_dir_key(cfg: dict) -> str:
    """Folder name of this config's caches (config only; computable before the inputs exist)."""
    return stable_hash(feature_spec(cfg))


def default_feature_dir(cfg: dict) -> Path:
    return feature_dir(cfg["results"], feature_dir_key(cfg))


def run_feature_dir(run_cfg: dict) -> Path | None:
    """The feature-cache folder a run reads: its method reads the cache (registry ``feature_cache``) and
    ``train.feature_cache`` is on; None otherwise (the workflow then asks for no features)."""
    if run_cfg["run"]["method"] not in FEATURE_CACHE_METHODS or not run_cfg["train"].get("feature_cache", True):
        return None
    return default_feature_dir(run_cfg)


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
    return manifest_file(cfg["results"])


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


# ------------------------------------------------------------------------------------- results folders
# backbone config key -> the folder name `weldfilm tiny-backbones` writes below backbones.dir (the order is
# the tiny builders' seed order, weldfilm.models.sizes.BACKBONE_NAMES)
TINY_BACKBONE_DIRS = {
    "video": "vjepa2",
    "audio": "ast",
    "image": "dinov3",
    "clip": "clip",
    "m3dm_rgb": "dino_vitb8",
    "dinomaly_encoder": "dinov2_reg",
}
ABLATION_PROTOCOL = "fair"  # ablations are runs of ABLATION_METHOD under the fair protocol
SPLIT_NAMES = ("train", "val", "test")


def manifest_file(results) -> Path:
    return Path(results) / "data" / "manifest.csv"


def validation_file(results) -> Path:
    return Path(results) / "data" / "validation.json"


def card_dir(results) -> Path:
    return Path(results) / "data" / "card"


def feature_dir(results, key) -> Path:
    """``features/<key>``: one Causal-FiLM feature cache (``key``: ``feature_dir_key``; may be a pattern)."""
    return Path(results) / "features" / str(key)


def encoder_cache_dir(results, name: str, key: str) -> Path:
    """``features/<name>/<key>``: a baseline's frozen-encoder cache (M3DM ``m3dm_rgb``/``m3dm_point``, ``dinomaly``)."""
    return Path(results) / "features" / name / key


def input_store_file(results, kind, split) -> Path:
    """``inputs/<kind>/<split>.npy``: one (kind, split) of the decoded-input store (weldfilm/data/store.py)."""
    return Path(results) / "inputs" / str(kind) / f"{str(split).lower()}.npy"


def run_dir(results, protocol, method, seed) -> Path:
    """``runs/<protocol>/<method>/seed<seed>`` (the arguments may be Snakemake wildcard patterns)."""
    return Path(results) / "runs" / str(protocol) / str(method) / f"seed{seed}"


def ablation_dir(results, ablation, seed) -> Path:
    """``ablations/<ablation>/seed<seed>``: a run of ABLATION_METHOD under ABLATION_PROTOCOL."""
    return Path(results) / "ablations" / str(ablation) / f"seed{seed}"


def run_folder(results, method, seed, protocol=ABLATION_PROTOCOL, ablation=None) -> Path:
    """The folder of any run: an ablation's (``ablation`` set) or a protocol's run."""
    if ablation:
        if method != ABLATION_METHOD:
            raise ConfigError(f"ablations apply to {ABLATION_METHOD} only, not '{method}'")
        return ablation_dir(results, ablation, seed)
    return run_dir(results, protocol, method, seed)


def paper_dir(results) -> Path:
    return Path(results) / "paper"


# The inverses the workflow's scripts use: a script takes its paths from snakemake.input/output, and
# these give the results folder those paths lie in (what the paper's readers scan and record).
def results_of_card_file(path) -> Path:
    """The results folder of a file of ``card_dir`` (``<results>/data/card/<file>``)."""
    return Path(path).parents[2]


def results_of_paper_dir(path) -> Path:
    """The results folder of ``paper_dir`` (``<results>/paper``)."""
    return Path(path).parent


def logs_dir(results) -> Path:
    return Path(results) / "logs"


def log_file(results, rule: str, *parts) -> Path:
    """One log per job: ``logs/<rule>/<parts...>.log`` (``logs/<rule>.log`` without parts)."""
    return Path(str(logs_dir(results).joinpath(rule, *map(str, parts))) + ".log")
