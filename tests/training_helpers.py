"""Helpers for tests that train Causal-FiLM on the tiny synthetic set (manifest + tiny backbones built once)."""

from __future__ import annotations

import shutil
from pathlib import Path

from weldfilm.config import run_config

_BUILT: set[Path] = set()
BACKBONE_DIRS = {"video": "vjepa2", "audio": "ast", "image": "dinov3", "clip": "clip", "m3dm_rgb": "dino_vitb8",
                 "dinomaly_encoder": "dinov2_reg"}


def shared_inputs(base: Path, data_root: Path, preprocess: dict) -> Path:
    """``base/manifest.csv`` and ``base/backbones/*`` for the tiny data set, written once per session."""
    if base not in _BUILT:
        from weldfilm.data.manifest import build_manifest
        from weldfilm.models.tiny import write_tiny_backbones

        base.mkdir(parents=True, exist_ok=True)
        build_manifest(data_root, base / "manifest.csv", seed=0)
        write_tiny_backbones(base / "backbones", seed=0, frame_size=preprocess["frame_size"],
                             video_frames=preprocess["video_frames"], image_size=preprocess["image_size"],
                             mel_bins=preprocess["audio_mel_bins"], audio_frames=preprocess["audio_frames"])
        _BUILT.add(base)
    return base


def ready_config(tiny_config: dict, tmp_path_factory, data_root: Path, method: str = "causal_film",
                 protocol: str = "fair", **train) -> dict:
    """A run config (seed 0) whose manifest and backbones exist; ``train`` overrides train.* keys."""
    shared = shared_inputs(tmp_path_factory.getbasetemp() / "weldfilm_shared", data_root, tiny_config["preprocess"])
    cfg = dict(tiny_config)
    results = Path(cfg["results"])
    (results / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy(shared / "manifest.csv", results / "data" / "manifest.csv")
    cfg["backbones"] = {**cfg["backbones"], **{k: str(shared / "backbones" / v) for k, v in BACKBONE_DIRS.items()}}
    cfg["train"] = {**cfg["train"], **train}
    return run_config(cfg, method, seed=0, protocol=protocol)


def train_and_score_both_ways(cfg: dict, run_dir: Path, split: str = "test"):
    """Train through the runner, then score ``split`` with the fitted method object (what the workflow's
    train job does) and with a method rebuilt from metadata.json (``weldfilm evaluate``); the two
    scores.csv must be identical (the rebuilt object has its own, empty, split-result cache).
    Returns (metadata, metrics of the rebuilt method); its files are in ``run_dir/eval/<split>``."""
    import pandas as pd

    from weldfilm.evaluation import evaluate_run, evaluate_splits
    from weldfilm.runner import fit_run, start_run

    method = start_run(cfg, run_dir)
    metadata = fit_run(method)
    fitted = evaluate_splits(run_dir, [split], {split: run_dir / "eval_fitted" / split}, method=method)[split]
    rebuilt = evaluate_run(run_dir, split, run_dir / "eval" / split)
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "eval_fitted" / split / "scores.csv"),
                                  pd.read_csv(run_dir / "eval" / split / "scores.csv"))
    assert fitted["i_auroc"] == rebuilt["i_auroc"] and fitted["notes"] == rebuilt["notes"]
    return metadata, rebuilt
