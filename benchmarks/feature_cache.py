"""Benchmark: Causal-FiLM epoch and evaluation time with the feature cache vs recomputing the backbones.

Generates a small synthetic set (default config sizes) + tiny backbones in a temporary folder, then
for both paths times one training epoch + validation (``CausalFiLMMethod.fit`` with 1 epoch) and the
scoring of VAL from the same checkpoint (a validation pass with the selected head in memory, and the
first call that also loads ``best.pt``), and prints them side by side with the max |difference|
of the validation scores (must be < 1e-5). Usage: ``python benchmarks/feature_cache.py [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def prepare(root: Path, good_runs: int, runs_per_class: int, **overrides) -> dict:
    """A synthetic dataset, its manifest and tiny backbones below ``root``; the Causal-FiLM run config
    (``overrides``: more dotted config keys, e.g. ``{"preprocess.image_size": 448}``)."""
    from weldfilm.config import load_config, run_config
    from weldfilm.data.manifest import build_manifest
    from weldfilm.data.synthetic import generate
    from weldfilm.models.tiny import write_tiny_backbones

    tiny = root / "backbones" / "tiny"
    overrides = {"results": str(root), "data.root": str(root / "data" / "synthetic"), "backbones.dir": str(tiny),
                 "train.epochs": 1, "train.device": "cpu", "synthetic.good_runs": good_runs,
                 "synthetic.runs_per_class": runs_per_class, **overrides}
    for key, sub in (("video", "vjepa2"), ("audio", "ast"), ("image", "dinov3"), ("clip", "clip"),
                     ("m3dm_rgb", "dino_vitb8"), ("dinomaly_encoder", "dinov2_reg")):
        overrides[f"backbones.{key}"] = str(tiny / sub)
    cfg = load_config(None, overrides)
    generate(cfg["data"]["root"], **cfg["synthetic"])
    build_manifest(cfg["data"]["root"], root / "data" / "manifest.csv", seed=cfg["data"]["split_seed"])
    p = cfg["preprocess"]
    write_tiny_backbones(tiny, seed=0, frame_size=p["frame_size"], video_frames=p["video_frames"],
                         image_size=p["image_size"], mel_bins=p["audio_mel_bins"], audio_frames=p["audio_frames"])
    return run_config(cfg, "causal_film", seed=0)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run(cfg: dict, root: Path) -> None:
    from weldfilm.methods.causal_film.method import CausalFiLMMethod

    device = torch.device("cpu")
    cached = CausalFiLMMethod(cfg, root / "run_cached", device)
    _, build_s = timed(lambda: [cached.split_data(s) for s in ("train", "val")])
    _, cached_epoch_s = timed(cached.fit)
    recompute_cfg = {**cfg, "train": {**cfg["train"], "feature_cache": False}}
    recomputed = CausalFiLMMethod(recompute_cfg, root / "run_recomputed", device)
    recomputed.backbones()  # loading the backbones is a one-off cost, not part of an epoch
    _, recompute_epoch_s = timed(recomputed.fit)
    # score VAL from the SAME checkpoint both ways
    scorer = CausalFiLMMethod(recompute_cfg, root / "run_cached", device)
    scorer._backbones = recomputed._backbones
    # first call: opens the split and loads best.pt (one-off per job); second: a validation pass as in
    # every epoch (head in memory; the cache path re-reads nothing, the recompute path decodes again)
    cached_scores, cached_first_s = timed(lambda: cached.score("val"))
    fresh_scores, fresh_first_s = timed(lambda: scorer.score("val"))
    _, cached_eval_s = timed(lambda: cached.score("val"))
    _, fresh_eval_s = timed(lambda: scorer.score("val"))
    diff = float(np.max(np.abs(cached_scores["score"].to_numpy() - fresh_scores["score"].to_numpy())))
    n_train, n_val = len(cached.split_data("train")), len(cached_scores)
    print(f"\nCausal-FiLM, default config sizes, {n_train} TRAIN / {n_val} VAL runs, CPU "
          f"({torch.get_num_threads()} threads)")
    print(f"{'':34s}{'recompute':>12s}{'cache':>12s}{'speed-up':>10s}")
    print(f"{'epoch (train + validation) [s]':34s}{recompute_epoch_s:12.2f}{cached_epoch_s:12.2f}"
          f"{recompute_epoch_s / cached_epoch_s:9.1f}x")
    print(f"{'evaluation of VAL [s]':34s}{fresh_eval_s:12.3f}{cached_eval_s:12.3f}{fresh_eval_s / cached_eval_s:9.1f}x")
    print(f"{'  same, first call (+ best.pt load)':34s}{fresh_first_s:12.3f}{cached_first_s:12.3f}"
          f"{fresh_first_s / cached_first_s:9.1f}x")
    print(f"one-off cache build (TRAIN + VAL): {build_s:.2f} s")
    print(f"max |score difference| on VAL: {diff:.3g} ({'OK' if diff < 1e-5 else 'FAIL'}: must be < 1e-5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", default=None, help="work in this folder and keep it (default: a temp folder)")
    parser.add_argument("--good-runs", type=int, default=16)
    parser.add_argument("--runs-per-class", type=int, default=2)
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="weldfilm_bench_"))
    try:
        cfg = prepare(root, args.good_runs, args.runs_per_class)
        run(cfg, root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
