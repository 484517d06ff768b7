"""Which config sections shape a run, and the hash of them (imports no torch; the Snakefile uses it).

``run_shape_hash(run_cfg)`` decides whether Snakemake re-runs a train / evaluate job (a rule param:
"Params have changed") and whether a killed job may resume from its ``last.pt``
(``weldfilm.runner.resume_allowed``). It covers the run's own method section and the shared sections every
method reads, nothing else: changing ``dinomaly.layer_groups`` re-runs the Dinomaly runs only.

A run config (``weldfilm.config.run_config``) already has its protocol's and ablation's overrides
applied, so a protocol or ablation that changes a section a method reads changes that method's hash.
What reaches a run through files (synthetic data, backbone weights, the manifest) is an input of the
job; Snakemake follows those by modification time, not through this hash. The resume check of a
re-run job must not miss them, though (a finished run keeps its ``last.pt``): ``run_resume_hash`` adds
a synthetic dataset's generator settings, which regenerate files of the same names, and the content of
the weights the run loads and of its manifest (weights replaced under the same path, another split).

``train_stream_key(run_cfg)`` says which runs see the same TRAIN batches (one job per method and seed
trains those in lockstep, ``weldfilm.runner.train_group``).
"""

from __future__ import annotations

from weldfilm.io import stable_hash

# Read by every method: the run's identity, the data and its loader (sizes, augmentation), the
# training loop (baselines merge their own settings over `train` and hand all of it to the Trainer)
# and the scoring done in the train job.
SHARED_SECTIONS = ("run", "data", "preprocess", "augment", "train", "evaluation")

# method -> what else it reads; "section.key" names one key of a section shared by several methods
METHOD_SECTIONS = {
    "causal_film": ("causal_film", "loss", "backbones.source", "backbones.tiny_seed", "backbones.tiny_size",
                    "backbones.video", "backbones.audio", "backbones.image", "backbones.clip"),
    "late_fusion": ("late_fusion",),
    "m3dm": ("m3dm", "backbones.source", "backbones.tiny_seed", "backbones.tiny_size", "backbones.m3dm_rgb"),
    "dinomaly": ("dinomaly", "backbones.source", "backbones.tiny_seed", "backbones.tiny_size",
                 "backbones.dinomaly_encoder"),
}

# backbones.* keys that are settings of the backbones, not folders a run loads (tiny_size: the architecture of
# the tiny stand-ins written into the same folders)
BACKBONE_SETTINGS = ("backbones.source", "backbones.tiny_seed", "backbones.tiny_size")

# Sections no run reads: which runs exist and where they go (the workflow's bookkeeping), how the
# synthetic data is generated (it reaches runs as files), whether decoded inputs are stored (`inputs`: the
# store is bit-identical to decoding) and how the paper is rendered.
NOT_READ_BY_RUNS = ("profile", "profiles", "protocols", "ablations", "seeds", "methods", "results", "workflow",
                    "synthetic", "inputs", "paper")


def run_reads(method: str) -> tuple[str, ...]:
    """The config sections (or ``section.key``) a run of ``method`` reads."""
    if method not in METHOD_SECTIONS:
        raise KeyError(f"run_keys.METHOD_SECTIONS has no entry for method '{method}'; add the sections it reads")
    return SHARED_SECTIONS + METHOD_SECTIONS[method]


def method_backbones(method: str) -> tuple[str, ...]:
    """The ``backbones.<key>`` folders a run of ``method`` loads (the inputs of its train job)."""
    return tuple(path.split(".", 1)[1] for path in run_reads(method)
                 if path.startswith("backbones.") and path not in BACKBONE_SETTINGS)


def run_shape(run_cfg: dict) -> dict:
    """``{section or section.key: value}`` of everything that shapes the run described by ``run_cfg``."""
    out = {}
    for path in run_reads(run_cfg["run"]["method"]):
        section, _, key = path.partition(".")
        value = run_cfg.get(section)
        out[path] = value.get(key) if key and isinstance(value, dict) else value
    return out


def run_shape_hash(run_cfg: dict) -> str:
    """Hash of ``run_shape(run_cfg)``: the workflow's re-run param and the resume check of a run."""
    return stable_hash(run_shape(run_cfg))


# run config keys naming a weights file (not a backbones.* folder) that a run of the method loads
WEIGHT_FILE_KEYS = {"m3dm": ("m3dm.point_mae_checkpoint",)}
# sections a run reads only to score (weldfilm/evaluation.py), never while training: changing one re-runs the
# train job (its scores change) but its finished runs resume, so they are re-scored, not trained again
SCORING_ONLY = ("evaluation",)


def run_input_files(run_cfg: dict) -> dict:
    """Digests of the files a run reads besides its data: each backbone folder it loads (``method_backbones``),
    its other weight files (``WEIGHT_FILE_KEYS``) and the manifest, where they exist (a missing one stops the run
    later with its own message). Digests as the feature caches take them (size, first and last MiB)."""
    from pathlib import Path

    from weldfilm.paths import directory_digest, file_digest, manifest_path

    method = run_cfg["run"]["method"]
    out = {}
    for key in method_backbones(method):
        folder = (run_cfg.get("backbones") or {}).get(key)
        if folder and Path(folder).is_dir():
            out[f"backbones.{key}"] = directory_digest(folder)
    for dotted in WEIGHT_FILE_KEYS.get(method, ()):
        section, _, key = dotted.partition(".")
        path = (run_cfg.get(section) or {}).get(key)
        if path and Path(path).is_file():
            out[dotted] = file_digest(Path(path))
    manifest = manifest_path(run_cfg) if run_cfg.get("results") else None
    if manifest is not None and manifest.is_file():
        out["manifest"] = file_digest(manifest)
    return out


def run_resume_hash(run_cfg: dict) -> str:
    """The key a run's ``last.pt`` must carry to be resumed (``weldfilm.runner.resume_allowed``).

    ``run_shape`` but the scoring-only sections (``SCORING_ONLY``), plus what reaches the run as files under
    unchanged names: on synthetic data the generator's settings (``synthetic.*`` but ``workers``, as the
    feature caches key them), and the content of its weights and manifest (``run_input_files``). Snakemake
    re-runs a train job when those files are newer, and that job must then train afresh, not resume from
    (or, for a finished run, keep) weights fitted on the old data or backbones.
    """
    shape = {path: value for path, value in run_shape(run_cfg).items() if path.split(".")[0] not in SCORING_ONLY}
    content = {"shape": shape, "files": run_input_files(run_cfg)}
    if (run_cfg.get("data") or {}).get("source") == "synthetic":
        content["synthetic"] = {k: v for k, v in (run_cfg.get("synthetic") or {}).items() if k != "workers"}
    return stable_hash(content)


# -------------------------------------------------------------------------------- TRAIN streams
# What a Causal-FiLM run's TRAIN batches are made of when its backbones run live (no TRAIN cache):
# the inputs (data, preprocessing, augmentation), the frozen backbones and how they run.
LIVE_STREAM_KEYS = ("data", "preprocess", "augment", "backbones.source", "backbones.tiny_seed", "backbones.tiny_size",
                    "backbones.video", "backbones.audio", "backbones.image", "backbones.clip",
                    "causal_film.result_layers", "train.use_augmentations", "train.backbone_precision",
                    "train.allow_tf32", "train.device")
# What orders and groups them, whatever their source: the shuffling seed, the batch size, the loader.
ORDER_KEYS = ("run.seed", "train.batch_size", "train.num_workers")


def _pick(run_cfg: dict, paths) -> dict:
    out = {}
    for path in paths:
        section, _, key = path.partition(".")
        value = run_cfg.get(section)
        out[path] = value.get(key) if key and isinstance(value, dict) else value
    return out


def train_stream_key(run_cfg: dict) -> str | None:
    """Key of the TRAIN batches a run trains on; runs with equal keys see bit-identical batches in the
    same order, so one job may train them in lockstep on one frozen-backbone pass per batch
    (``weldfilm.runner.train_group``). None: the method's runs are fitted one after another.

    Causal-FiLM: the feature cache's folder key when TRAIN is read from the cache (``cached_splits``),
    else the settings that make the augmented or plain inputs and the backbones' outputs; plus the
    shuffling seed, batch size and loader. The training subset (normal-only, spec 8.3) follows from the data.
    """
    if run_cfg["run"]["method"] != "causal_film":
        return None
    from weldfilm.paths import cached_splits, feature_dir_key

    if "train" in cached_splits(run_cfg):
        source = {"cache": feature_dir_key(run_cfg)}
    else:
        source = {"live": _pick(run_cfg, LIVE_STREAM_KEYS)}
        if (run_cfg.get("data") or {}).get("source") == "synthetic":
            source["synthetic"] = {k: v for k, v in (run_cfg.get("synthetic") or {}).items() if k != "workers"}
    return stable_hash({"source": source, "order": _pick(run_cfg, ORDER_KEYS)})
