"""Which config sections shape a run, and the hash of them (imports no torch; the Snakefile uses it).

``run_shape_hash(run_cfg)`` decides whether Snakemake re-runs a train / evaluate job (a rule param:
"Params have changed") and whether a killed job may resume from its ``last.pt``
(``scripts/train_resume.py``). It covers the run's own method section and the shared sections every
method reads, nothing else: changing ``dinomaly.layer_groups`` re-runs the Dinomaly runs only.

A run config (``weldfilm.config.run_config``) already has its protocol's and ablation's overrides
applied, so a protocol or ablation that changes a section a method reads changes that method's hash.
What reaches a run through files (synthetic data, backbone weights, the manifest) is an input of the
job; Snakemake follows those by modification time, not through this hash. The resume check of a
re-run job must not miss them, though (a finished run keeps its ``last.pt``): ``run_resume_hash`` adds
a synthetic dataset's generator settings, which regenerate files of the same names.

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


def run_resume_hash(run_cfg: dict) -> str:
    """The key a run's ``last.pt`` must carry to be resumed (``scripts/train_resume.py``).

    ``run_shape_hash`` plus, on synthetic data, the generator's settings (``synthetic.*`` but
    ``workers``, as the feature caches key them): Snakemake re-runs a train job when its regenerated
    input files are newer, and that job must then train afresh, not resume from (or, for a finished
    run, keep) the weights fitted on the old data. Equal to ``run_shape_hash`` on real data.
    """
    if (run_cfg.get("data") or {}).get("source") != "synthetic":
        return run_shape_hash(run_cfg)
    synthetic = {k: v for k, v in (run_cfg.get("synthetic") or {}).items() if k != "workers"}
    return stable_hash({"shape": run_shape(run_cfg), "synthetic": synthetic})


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
