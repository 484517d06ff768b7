"""Command ``train``: build a method from a run config, fit it, write the run's ``metadata.json`` last.

``metadata.json`` is the workflow's output of a training job, so it is written only after the fit
succeeded (atomically); a killed job leaves ``last.pt`` for ``--resume`` but no metadata.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path

from weldfilm.errors import ConfigError
from weldfilm.io import provenance, write_json
from weldfilm.methods import get_method, resolve_device
from weldfilm.training.precision import precision_record, precision_text

METADATA = "metadata.json"


def train_run(cfg: dict, out_dir, resume: bool = False, feature_dir=None) -> dict:
    """Train the run described by ``cfg`` (a ``run_config`` result) into ``out_dir``; return its metadata."""
    return fit_run(build_method(cfg, out_dir, feature_dir), resume=resume)


def build_method(cfg: dict, out_dir, feature_dir=None):
    """The ``Method`` of the run described by ``cfg`` (a ``run_config`` result), working in ``out_dir``."""
    if "run" not in cfg:
        raise ConfigError("train_run needs a run config from weldfilm.config.run_config (key 'run' is missing)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METADATA).unlink(missing_ok=True)  # a re-run is complete only once it succeeded again
    method_cls = get_method(cfg["run"]["method"])
    device = resolve_device(cfg["train"])
    extra = {}
    if feature_dir is not None and "feature_dir" in inspect.signature(method_cls).parameters:
        extra["feature_dir"] = Path(feature_dir)
    return method_cls(cfg, out_dir, device, **extra)


def fit_run(method, resume: bool = False) -> dict:
    """Fit ``method`` (from ``build_method``) and write its run's metadata.json last; return the metadata."""
    cfg, out_dir, device = method.cfg, method.run_dir, method.device
    feature_dir = getattr(method, "feature_dir", None)
    started = time.perf_counter()
    summary = method.fit(resume=resume)
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
        "train_seconds": round(time.perf_counter() - started, 3),
        "notes": list(method.notes),
        "provenance": provenance(cfg, run_dir=str(out_dir)),
    }
    write_json(out_dir / METADATA, metadata)
    return metadata


def add_cli_arguments(parser) -> None:
    parser.add_argument("--method", required=True, help="causal_film | late_fusion | m3dm | dinomaly")
    parser.add_argument("--config", default=None, help="config.yaml (default: the project's)")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--seed", type=int, default=None, help="default: the first of config seeds")
    parser.add_argument("--protocol", default="fair", choices=["fair", "paper_faithful"])
    parser.add_argument("--ablation", default=None, help="an entry of config ablations (causal_film only)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted config overrides")
    parser.add_argument("--feature-dir", default=None, help="folder of <split>.safetensors feature caches")
    parser.add_argument("--resume", action="store_true", help="continue from checkpoints/last.pt")


def cli(args) -> int:
    from weldfilm.config import load_config, parse_set_args, run_config

    cfg = load_config(args.config, parse_set_args(args.set))
    seed = args.seed if args.seed is not None else cfg["seeds"][0]
    run_cfg = run_config(cfg, args.method, seed, args.protocol, args.ablation)
    metadata = train_run(run_cfg, args.out, resume=args.resume, feature_dir=args.feature_dir)
    fit = metadata["fit"]
    print(f"trained {args.method} seed {seed} ({args.protocol}) into {args.out}: "
          f"best {fit.get('selection')} {fit.get('best_metric')} at epoch {fit.get('best_epoch')}")
    return 0
