"""Command ``train``: build a method from a run config, fit it, write the run's ``metadata.json`` last.

``metadata.json`` is the workflow's output of a training job, so it is written only after the fit
succeeded (atomically); a killed job leaves ``last.pt`` for ``--resume`` but no metadata.

``train_group`` is the workflow's train job: every run of one method and seed (protocols and, for
Causal-FiLM, ablations), or of all seeds (``workflow.seeds_together``). Runs with one TRAIN stream (``weldfilm.run_keys.train_stream_key``) are
trained in lockstep on one frozen-backbone pass per batch, the others one after another; each run
resumes from its own ``last.pt`` when ``resume_allowed`` says its checkpoints belong to its config.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from weldfilm.errors import ConfigError
from weldfilm.io import provenance, read_json, write_json
from weldfilm.methods import METHOD_NAMES, build_method
from weldfilm.training.precision import precision_record, precision_text

METADATA = "metadata.json"
RESUME_KEY = "resume_key.json"


def resume_allowed(run_dir, config_hash: str) -> bool:
    """True when a ``*last.pt`` exists and was written for this exact run config; records the config.

    A re-run job (``--rerun-incomplete`` after a kill, or outputs deleted) keeps its
    ``checkpoints/*last.pt`` (not declared outputs; late fusion keeps one per branch), so training
    continues where it stopped, and a finished run is not trained again. ``resume_key.json`` records
    which run config those checkpoints belong to (``weldfilm.run_keys.run_resume_hash``): after a
    config change they are moved aside to ``checkpoints.stale/`` (said in the log) and the run trains
    from scratch.
    """
    run_dir = Path(run_dir)
    checkpoints = run_dir / "checkpoints"
    key_file = run_dir / RESUME_KEY
    same_config = key_file.is_file() and read_json(key_file, "resume key").get("config_hash") == config_hash
    if checkpoints.is_dir() and not same_config:
        stale = run_dir / "checkpoints.stale"
        shutil.rmtree(stale, ignore_errors=True)
        checkpoints.rename(stale)
        print(f"{run_dir}: checkpoints of another run config moved to {stale}; training from scratch")
    write_json(key_file, {"config_hash": config_hash})
    return same_config and any(checkpoints.glob("*last.pt"))


def train_run(cfg: dict, out_dir, resume: bool = False, feature_dir=None) -> dict:
    """Train the run described by ``cfg`` (a ``run_config`` result) into ``out_dir``; return its metadata."""
    return fit_run(start_run(cfg, out_dir, feature_dir), resume=resume)


def start_run(cfg: dict, out_dir, feature_dir=None):
    """The ``Method`` of the run described by ``cfg`` (``weldfilm.methods.build_method``), working in
    ``out_dir``, whose ``metadata.json`` is removed first (a re-run is complete only once it succeeded again)."""
    if "run" not in cfg:
        raise ConfigError("train_run needs a run config from weldfilm.config.run_config (key 'run' is missing)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METADATA).unlink(missing_ok=True)
    return build_method(cfg, out_dir, feature_dir=feature_dir)


def fit_run(method, resume: bool = False) -> dict:
    """Fit ``method`` (from ``start_run``) and write its run's metadata.json last; return the metadata."""
    started = time.perf_counter()
    summary = method.fit(resume=resume)
    return write_metadata(method, summary, time.perf_counter() - started)


def write_metadata(method, summary: dict, seconds: float, lockstep: dict | None = None) -> dict:
    """The run's ``metadata.json`` after its fit (``summary``: what ``fit`` returned); return it.

    ``lockstep``: the runs it was trained with on one TRAIN stream (``train_seconds`` is then theirs together).
    """
    cfg, out_dir, device = method.cfg, method.run_dir, method.device
    feature_dir = getattr(method, "feature_dir", None)
    precision = precision_record(device, cfg["train"])
    metadata = {
        "run": cfg["run"],
        "config": cfg,
        "describe": {**method.describe(), "precision": precision_text(precision)},  # a row of the fairness table
        "precision": precision,
        "token_shapes": method.token_shapes(),
        "selection_split": method.selection_split,
        "fit": summary,
        "feature_dir": str(feature_dir) if feature_dir is not None else None,
        "device": str(device),
        "train_seconds": round(seconds, 3),
        "lockstep": lockstep,
        "notes": list(method.notes),
        "provenance": provenance(cfg, run_dir=str(out_dir)),
    }
    write_json(out_dir / METADATA, metadata)
    return metadata


def train_group(cfg: dict, settings_list: list[dict], run_dirs, feature_dirs=None, eval_splits=(),
                resume: bool = True) -> list[dict]:
    """Train every run of one method, of one seed or of several (``workflow.seeds_together``), in one process
    (``settings_list``: ``run_config`` keywords method, seed,
    protocol, ablation; ``run_dirs``, ``feature_dirs``: one per run, None = the default feature folder),
    write each run's metadata.json and, for ``eval_splits``, its ``eval/<split>/`` scores. Returns the metadata.

    Each run resumes from its own ``last.pt`` (``resume`` and ``resume_allowed``: same resume hash); a
    finished run is not trained again (its metadata is rewritten and it is re-scored). Runs with equal
    ``train_stream_key`` whose method has ``fit_together`` (Causal-FiLM) train in lockstep: one batch,
    one frozen-backbone pass, every head; each exactly as trained alone (tests/test_shared_pass.py).
    """
    from weldfilm.config import run_config
    from weldfilm.run_keys import run_resume_hash, train_stream_key

    run_dirs = [Path(d) for d in run_dirs]
    feature_dirs = list(feature_dirs) if feature_dirs is not None else [None] * len(run_dirs)
    if not (len(settings_list) == len(run_dirs) == len(feature_dirs)) or not run_dirs:
        raise ConfigError(f"train_group needs one run folder and feature folder per run: {len(settings_list)} runs, "
                          f"{len(run_dirs)} run folders, {len(feature_dirs)} feature folders")
    if len({s["method"] for s in settings_list}) != 1:
        raise ConfigError(f"train_group trains the runs of one method, got {settings_list}")
    run_cfgs = [run_config(cfg, s["method"], s["seed"], s["protocol"], s.get("ablation")) for s in settings_list]
    resumes = []
    for run_dir, run_cfg, settings in zip(run_dirs, run_cfgs, settings_list):
        allowed = resume_allowed(run_dir, run_resume_hash(run_cfg))  # the rule's config_hash + regenerated data
        resumes.append(resume and allowed)
        print(f"run {run_dir}: {settings}, resume={resumes[-1]}")
    streams: dict = {}
    for index, run_cfg in enumerate(run_cfgs):
        key = train_stream_key(run_cfg)
        streams.setdefault(key if key is not None else ("alone", index), []).append(index)
    metadata = [None] * len(run_cfgs)
    methods = [None] * len(run_cfgs)  # built per group, so that one group's models are held at a time
    splits = list(eval_splits)
    for key, indices in streams.items():
        for i in indices:
            methods[i] = start_run(run_cfgs[i], run_dirs[i], feature_dirs[i])
        together = [methods[i] for i in indices]
        if len(indices) > 1 and hasattr(type(together[0]), "fit_together"):
            started = time.perf_counter()
            summaries = type(together[0]).fit_together(together, [resumes[i] for i in indices])
            seconds = time.perf_counter() - started
            lockstep = {"stream_key": key, "runs": [str(run_dirs[i]) for i in indices]}
            for i, summary in zip(indices, summaries):
                metadata[i] = write_metadata(methods[i], summary, seconds, lockstep)
        else:
            for i in indices:
                metadata[i] = fit_run(methods[i], resume=resumes[i])
        if splits:
            from weldfilm.evaluation import evaluate_splits

            for i in indices:
                evaluate_splits(run_dirs[i], splits, {split: run_dirs[i] / "eval" / split for split in splits},
                                method=methods[i])
        for i in indices:
            methods[i] = None  # one group's models held at a time (M3DM's banks are large)
    return metadata


def add_cli_arguments(parser) -> None:
    parser.add_argument("--method", required=True, choices=METHOD_NAMES)
    parser.add_argument("--config", default=None, help="config.yaml (default: the project's)")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--seed", type=int, default=None, help="default: the first of config seeds")
    parser.add_argument("--protocol", default="fair", choices=["fair", "paper_faithful"])
    parser.add_argument("--ablation", default=None, help="an entry of config ablations (causal_film only)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted config overrides")
    parser.add_argument("--feature-dir", default=None, help="folder of <split>.safetensors feature caches")
    parser.add_argument("--resume", action="store_true",
                        help="continue from checkpoints/last.pt if it was written for this run's config "
                             "(resume_key.json; else it is moved to checkpoints.stale/)")


def cli(args) -> int:
    from weldfilm.config import load_config, parse_set_args, run_config

    cfg = load_config(args.config, parse_set_args(args.set))
    seed = args.seed if args.seed is not None else cfg["seeds"][0]
    run_cfg = run_config(cfg, args.method, seed, args.protocol, args.ablation)
    from weldfilm.run_keys import run_resume_hash

    resume = resume_allowed(args.out, run_resume_hash(run_cfg)) and args.resume  # never checkpoints of another config
    metadata = train_run(run_cfg, args.out, resume=resume, feature_dir=args.feature_dir)
    fit = metadata["fit"]
    print(f"trained {args.method} seed {seed} ({args.protocol}) into {args.out}: "
          f"best {fit.get('selection')} {fit.get('best_metric')} at epoch {fit.get('best_epoch')}")
    return 0
