# Paths, wildcard constraints and helpers shared by every rule file.
# CFG is the validated config (profile applied, defaults filled) made in the Snakefile.

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

from weldfilm import paper as paper_outputs
from weldfilm.config import REPO_ROOT, job_environment, method_audio_settings, run_config
from weldfilm.data import store as input_store
from weldfilm import paths
from weldfilm.methods import ABLATION_METHOD
from weldfilm.paths import cached_splits, feature_build_mem_mb
from weldfilm.io import stable_hash
from weldfilm.run_keys import method_backbones, run_shape_hash

RESULTS = os.path.normpath(CFG["results"])
LOGS = str(paths.logs_dir(RESULTS))
SEEDS = [int(seed) for seed in CFG["seeds"]]
METHODS = list(CFG["methods"])
PROTOCOLS = list(CFG["protocols"])
ABLATIONS = list(CFG["ablations"])
# ABLATION_METHOD (whose runs the ablations are) and the feature-cache methods (weldfilm.paths.run_feature_dir)
# come from the method registry (weldfilm.methods.REGISTRY); every folder name from weldfilm.paths.
ABLATION_PROTOCOL = paths.ABLATION_PROTOCOL
SPLITS = list(paths.SPLIT_NAMES)
EVAL_SPLITS = list(CFG["workflow"]["eval_splits"])
EVALUATE_IN_TRAIN_JOB = bool(CFG["workflow"]["evaluate_in_train_job"])

DATA_ROOT = os.path.normpath(CFG["data"]["root"])
PAPER_MANIFEST = CFG["data"]["paper_manifest"]
MANIFEST = str(paths.manifest_file(RESULTS))
VALIDATION = str(paths.validation_file(RESULTS))
CARD_DIR = str(paths.card_dir(RESULTS))
CARD_FILES = ["counts.csv", "counts.md", "separability.csv", "separability.md", "modalities.png"]

# backbone config key -> folder name written by `weldfilm tiny-backbones`
TINY_BACKBONE_NAMES = paths.TINY_BACKBONE_DIRS
BACKBONE_DIRS = {key: os.path.normpath(CFG["backbones"][key]) for key in TINY_BACKBONE_NAMES if CFG["backbones"][key]}



def nvidia_gpu_visible():
    """True when this machine shows an NVIDIA GPU (a working `nvidia-smi -L`)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    smi = shutil.which("nvidia-smi")
    return bool(smi) and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


# GPU rules request gpu=1 where a GPU exists, so `--resources gpu=1` gives each job the GPU in turn
# (with workflow.gpu_job_threads threads: its loader workers); on a CPU-only machine they request none
# and run single-threaded side by side on the cores.
GPU_PER_JOB = {"always": 1, "never": 0, "auto": int(nvidia_gpu_visible())}[CFG["workflow"]["gpu_jobs"]]
GPU_JOB_THREADS = int(CFG["workflow"]["gpu_job_threads"]) if GPU_PER_JOB else 1
# every job (local, or submitted from here to SLURM) inherits these (workflow.tune_malloc)
for _name, _value in job_environment(CFG).items():
    os.environ.setdefault(_name, _value)

RUN_DIR = str(paths.run_dir(RESULTS, "{protocol}", "{method}", "{seed}"))
ABLATION_DIR = str(paths.ablation_dir(RESULTS, "{ablation}", "{seed}"))
FEATURE_FILE = str(paths.cache_file(paths.feature_dir(RESULTS, "{feature_key}"), "{split}"))
PAPER_DIR = str(paths.paper_dir(RESULTS))
PAPER_SRC = str(REPO_ROOT / CFG["workflow"]["paper_src"])


@functools.lru_cache(maxsize=None)
def cached_run_config(method, seed, protocol, ablation):
    """weldfilm.config.run_config, computed once per run."""
    return run_config(CFG, method, seed, protocol, ablation)


def all_run_settings():
    """Every run of the paper: methods x seeds x protocols, then ablations x seeds."""
    main = [dict(method=m, seed=s, protocol=p, ablation=None) for p in PROTOCOLS for m in METHODS for s in SEEDS]
    ablations = [dict(method=ABLATION_METHOD, seed=s, protocol=ABLATION_PROTOCOL, ablation=a)
                 for a in ABLATIONS for s in SEEDS]
    return main + ablations


def feature_key_of(settings):
    """The feature-cache folder key of a run (weldfilm.paths.run_feature_dir), None without a cache."""
    folder = paths.run_feature_dir(cached_run_config(**settings))
    return folder.name if folder is not None else None


# feature key -> the protocol/ablation whose config builds it (the seed does not enter the key). One
# cache serves every run with the same backbones, preprocessing and data; a protocol or ablation that
# changes them gets its own folder, never a stale cache.
FEATURE_SOURCES = {}
for _settings in all_run_settings():
    _key = feature_key_of(_settings)
    if _key:
        FEATURE_SOURCES.setdefault(_key, {k: _settings[k] for k in ("method", "protocol", "ablation")})


def _alternatives(names):
    """A regex that matches exactly one of ``names``; none at all when the list is empty."""
    return "|".join(re.escape(str(name)) for name in names) or "(?!)"


wildcard_constraints:
    method=_alternatives(METHODS),
    protocol=_alternatives(PROTOCOLS),
    ablation=_alternatives(ABLATIONS),
    feature_key=_alternatives(FEATURE_SOURCES),
    seed=r"\d+",
    split=_alternatives(SPLITS),


def section_hash(*sections):
    """Hash of config sections, passed as a rule param so that changing them re-runs the rule."""
    return stable_hash({name: CFG[name] for name in sections})


def run_settings(wildcards):
    """Method, seed, protocol and ablation of a train/evaluate job (main run or ablation)."""
    return {
        "method": wildcards.get("method", ABLATION_METHOD),
        "seed": int(wildcards.seed),
        "protocol": wildcards.get("protocol", ABLATION_PROTOCOL),
        "ablation": wildcards.get("ablation"),
    }


def run_config_hash(wildcards):
    """Hash of what shapes one run (weldfilm.run_keys: its method's sections and the shared ones it
    reads); the train job's resume check uses the same function."""
    return run_shape_hash(cached_run_config(**run_settings(wildcards)))


def run_dir(wildcards):
    """The run folder of the job: runs/<protocol>/<method>/seed<seed> or ablations/<ablation>/seed<seed>."""
    pattern = ABLATION_DIR if "ablation" in wildcards.keys() else RUN_DIR
    return pattern.format(**dict(wildcards.items()))


def feature_files(wildcards):
    """The cached features of every split the run reads ([] for a method without a cache; no TRAIN cache
    for a run that trains on augmented inputs: weldfilm.paths.cached_splits)."""
    settings = run_settings(wildcards)
    key = feature_key_of(settings)
    return expand(FEATURE_FILE, feature_key=key, split=cached_splits(cached_run_config(**settings))) if key else []


def input_store_files(wildcards):
    """The decoded-input store files (rule inputs, workflow/rules/inputs.smk) a run's own train/evaluate job
    reads: weldfilm.data.store.run_input_kinds ([] with inputs.store off; Causal-FiLM: only the splits it
    does not read from the feature cache)."""
    return input_store.store_files(RESULTS, input_store.run_input_kinds(cached_run_config(**run_settings(wildcards))))


def feature_store_files(wildcards):
    """The decoded-input store files the feature-cache build of one split reads (rule features)."""
    source = FEATURE_SOURCES[wildcards.feature_key]
    cfg = cached_run_config(source["method"], SEEDS[0], source["protocol"], source["ablation"])
    return input_store.store_files(RESULTS, input_store.feature_input_kinds(cfg, splits=[wildcards.split]))


def input_kinds():
    """kind name -> spec: every kind some run, or the feature-cache build of its config, reads (rule inputs).
    The spec (sizes + data settings) is all a build needs, so the job depends on nothing else of the config."""
    kinds = {}
    for settings in all_run_settings():
        cfg = cached_run_config(**settings)
        for by_split in (input_store.run_input_kinds(cfg), input_store.feature_input_kinds(cfg, splits=SPLITS)):
            for spec in (spec for specs in by_split.values() for spec in specs):
                kinds.setdefault(input_store.kind_name(spec), spec)
    return kinds


INPUT_KINDS = input_kinds()
INPUT_FILE = str(input_store.store_file(RESULTS, "{kind}", "{split}"))


def train_inputs(wildcards):
    """What a run reads: the validated manifest, its method's backbones, its cached features and its stored inputs."""
    backbones = [BACKBONE_DIRS[key] for key in method_backbones(run_settings(wildcards)["method"]) if key in BACKBONE_DIRS]
    return {"manifest": MANIFEST, "validation": VALIDATION, "backbones": backbones, "features": feature_files(wildcards),
            "inputs": input_store_files(wildcards)}


# ---------------------------------------------------------------- train jobs: one per method and seed
# A train job (train_<method> in workflow/rules/methods.smk) trains every run of its method and seed,
# the protocols' runs and, for Causal-FiLM, the ablations (weldfilm.runner.train_group; runs on one
# TRAIN stream in lockstep, one frozen-backbone pass per batch).
TRAIN_METHODS = list(dict.fromkeys(METHODS + ([ABLATION_METHOD] if ABLATIONS else [])))


class RunWildcards(dict):
    """The wildcards one run's train/evaluate job would have, so that the per-run helpers above
    (train_inputs, feature_files, run_dir, run_config_hash) serve each run of a train job."""

    __getattr__ = dict.__getitem__


# workflow.seeds_together: methods whose train job takes every seed (no {seed} wildcard): one process
# start-up for all of them where each seed's runs take seconds (the default profile's baselines)
SEEDS_TOGETHER = [method for method in TRAIN_METHODS if method in CFG["workflow"]["seeds_together"]]


def job_seeds(method, seed="{seed}"):
    """The seeds one train_<method> job trains: every seed (workflow.seeds_together) or its own."""
    return SEEDS if method in SEEDS_TOGETHER else [seed]


def group_runs(method, seed="{seed}"):
    """RunWildcards of every run a train_<method> job trains (``seed`` may stay the pattern)."""
    runs = []
    for job_seed in job_seeds(method, seed):
        runs += [RunWildcards(protocol=p, method=method, seed=job_seed) for p in PROTOCOLS if method in METHODS]
        if method == ABLATION_METHOD:
            runs += [RunWildcards(ablation=a, seed=job_seed) for a in ABLATIONS]
    return runs


def train_log(method):
    """Log of a train_<method> job: logs/train/<method>/seed<seed>.log, or all_seeds.log (workflow.seeds_together)."""
    return log_path("train", method, "all_seeds" if method in SEEDS_TOGETHER else "seed{seed}")


def group_outputs(method):
    """metadata.json (and, scoring in the train job, the eval files) of every run of the job."""
    out = []
    for run in group_runs(method):
        pattern = run_dir(run)
        out.append(os.path.join(pattern, "metadata.json"))
        if EVALUATE_IN_TRAIN_JOB:
            out += list(eval_outputs(pattern).values())
    return out


def group_inputs(method):
    """Input function of train_<method>: the union over its runs of what train_inputs gives each run."""

    def inputs(wildcards):
        union = {}
        for run in group_runs(method, wildcards.get("seed")):
            for key, value in train_inputs(run).items():
                union.setdefault(key, [])
                union[key] += [value] if isinstance(value, str) else list(value)
        return {key: list(dict.fromkeys(values)) for key, values in union.items()}

    return inputs


def group_members(method):
    """Param of train_<method>: each run's settings, folder, feature folder and inputs (train_inputs)."""

    def members(wildcards):
        out = []
        for run in group_runs(method, wildcards.get("seed")):
            features = feature_files(run)
            out.append({"settings": run_settings(run), "run_dir": run_dir(run),
                        "feature_dir": os.path.dirname(features[0]) if features else None,
                        "inputs": train_inputs(run)})
        return out

    return members


def group_config_hash(method):
    """Param of train_<method>: hash over its runs' run_shape_hash, so changing one run re-runs the job
    (inside it, the other runs resume from their finished last.pt and are only re-scored)."""

    def config_hash(wildcards):
        return stable_hash([run_config_hash(run) for run in group_runs(method, wildcards.get("seed"))])

    return config_hash


def evaluate_inputs(wildcards):
    """The trained run (its metadata.json is written last) and the features it scores."""
    return {"metadata": os.path.join(run_dir(wildcards), "metadata.json"), "features": feature_files(wildcards),
            "inputs": input_store_files(wildcards)}


def eval_outputs(run_pattern):
    """scores.csv + metrics.json of every evaluated split below a run folder pattern."""
    return {
        f"{split}_{name.split('.')[0]}": os.path.join(run_pattern, "eval", split, name)
        for split in EVAL_SPLITS
        for name in ("scores.csv", "metrics.json")
    }


def log_path(rule_name, *parts):
    """One log file per job below results/logs/<rule>/."""
    return str(paths.log_file(RESULTS, rule_name, *parts))


def all_eval_metrics():
    """Every metrics.json the paper reads: methods x seeds x protocols and ablations x seeds."""
    return [
        str(paths.run_folder(RESULTS, **s) / "eval" / split / "metrics.json")
        for s in all_run_settings()
        for split in EVAL_SPLITS
    ]


def all_run_metadata():
    """Every run's metadata.json (the fairness, token-shape and deviations tables read them)."""
    return [str(paths.run_folder(RESULTS, **s) / "metadata.json")
            for s in all_run_settings()]


def reported(paths, suffix, caption, category):
    """Outputs with the files ending in ``suffix`` wrapped for the Snakemake report (the rest plain);
    ``caption`` may name the file's stem as ``{name}`` (one caption file per table or figure)."""

    def wrap(path):  # (a line may not start with `report(` in a .smk file: it reads as the keyword)
        return report(path, caption=caption.format(name=Path(path).name[: -len(suffix)]), category=category)

    return [wrap(path) if path.endswith(suffix) else path for path in paths]


TABLE_FILES = [os.path.join(PAPER_DIR, paper_outputs.TABLES_DIR, name) for name in paper_outputs.TABLES]
FIGURE_FILES = [os.path.join(PAPER_DIR, paper_outputs.FIGURES_DIR, name) for name in paper_outputs.FIGURES]
PAPER_FILES = [os.path.join(PAPER_DIR, name) for name in paper_outputs.PAPER_OUTPUTS]
