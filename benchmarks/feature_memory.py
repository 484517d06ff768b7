"""Benchmark: peak memory (RSS) of a feature-cache build at two split sizes, before and after streaming.

Generates two synthetic sets (``--sizes``: runs per defect class; the VAL split grows with it) and
tiny backbones in a temporary folder, then builds the VAL feature cache of each in a fresh process
with the current ``weldfilm.features`` ("after": written batch by batch) and, where git can show it,
with the implementation of ``--before`` ("before": every batch kept, concatenated, then saved) and
prints, side by side, the peak RSS of the process, its growth over the RSS just before the build
(backbones loaded) and the cache size. After streaming the growth stays flat as the split grows.
The build's batches are small (``--batch-size``) so that both splits span several of them. With the
tiny backbones a run's features (~1 MB) are small next to the transient memory of decoding and of
the backbones (~0.37 GB), which the allocator keeps and reuses, so ``--inflate K`` repeats the stored
image tokens K times along their width (features of a larger backbone; the compute is unchanged)
to make the held split visible: ``--inflate 16`` shows "before" growing with the split, "after" flat.
Usage: ``python benchmarks/feature_memory.py [--sizes 1 4] [--before a653f4a] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEFORE_COMMIT = "a653f4a"  # the last commit whose feature cache held the whole split in memory


def rss_mb() -> float:
    """Current resident set size of this process (MB)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def load_features_module(impl: str):
    """``weldfilm.features`` now ("after") or as of a commit (its source from git, loaded as a module)."""
    if impl == "after":
        import weldfilm.features as module

        return module
    source = subprocess.run(["git", "show", f"{impl}:weldfilm/features.py"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="weldfilm_features_before_")) / "features_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("features_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def child(cfg_path: str, impl: str, out: str, inflate: str) -> None:
    """One build in this (fresh) process; prints JSON with its memory figures."""
    import torch

    from weldfilm.models.backbones import FrozenBackbones

    cfg = json.loads(Path(cfg_path).read_text())
    module = load_features_module(impl)
    backbones = FrozenBackbones.from_config(cfg, torch.device("cpu"))
    backbones.token_shapes()  # the shape probe runs once before the build (it runs inside it anyway)
    if int(inflate) > 1:  # stored image tokens repeated along their width: per-run features as at larger sizes
        extract = backbones.extract
        backbones.extract = lambda batch: {**(out := extract(batch)),
                                           "image_tokens": torch.cat([out["image_tokens"]] * int(inflate), dim=-1)}
    base = rss_mb()
    base_peak = peak_rss_mb()
    started = time.perf_counter()
    path = module.build_feature_cache(cfg, "val", out, backbones=backbones, device="cpu")
    seconds = time.perf_counter() - started
    samples = len(json.loads(Path(path).with_suffix(".json").read_text())["sample_ids"])
    print(json.dumps({"impl": impl, "samples": samples, "rss_before_build_mb": base,
                      "peak_rss_mb": max(peak_rss_mb(), base_peak), "growth_mb": peak_rss_mb() - base,
                      "cache_mb": Path(path).stat().st_size / 2**20, "seconds": seconds}))


def prepare(root: Path, good_runs: int, runs_per_class: int, image_size: int, batch_size: int) -> dict:
    """The feature-cache benchmark's data, manifest and tiny backbones at this benchmark's sizes."""
    spec = importlib.util.spec_from_file_location("feature_cache_bench", Path(__file__).with_name("feature_cache.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.prepare(root, good_runs, runs_per_class, **{"train.eval_batch_size": batch_size,
                                                             "preprocess.image_size": image_size})


def measure(cfg: dict, root: Path, impl: str, inflate: int) -> dict:
    cfg_path = root / f"cfg_{impl}.json"
    cfg_path.write_text(json.dumps(cfg))
    out = root / f"val_{impl}.safetensors"
    result = subprocess.run([sys.executable, __file__, "--child", str(cfg_path), impl, str(out), str(inflate)],
                            capture_output=True,
                            text=True, env={**__import__("os").environ, "WELDFILM_PROGRESS": "0"})
    if result.returncode != 0:
        raise SystemExit(f"build with {impl} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[1, 4], help="synthetic runs per defect class")
    parser.add_argument("--good-runs", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=448, help="post-weld photo size (DINOv3 tokens grow with it)")
    parser.add_argument("--batch-size", type=int, default=4, help="train.eval_batch_size of the build")
    parser.add_argument("--before", default=BEFORE_COMMIT, help="commit of the 'before' implementation ('' = skip)")
    parser.add_argument("--keep", default=None, help="work in this folder and keep it (default: a temp folder)")
    parser.add_argument("--inflate", type=int, default=1,
                        help="repeat the stored image tokens K times along their width (per-run features K x larger)")
    parser.add_argument("--child", nargs=4, metavar=("CFG", "IMPL", "OUT", "INFLATE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    impls = ["after"]
    if args.before:
        try:
            subprocess.run(["git", "cat-file", "-e", f"{args.before}:weldfilm/features.py"], cwd=REPO, check=True,
                           capture_output=True)
            impls.insert(0, args.before)
        except (subprocess.CalledProcessError, OSError):
            print(f"(no 'before' column: git cannot show {args.before}:weldfilm/features.py here)")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="weldfilm_featmem_"))
    rows = []
    try:
        for runs_per_class in args.sizes:
            folder = root / f"rpc{runs_per_class}"
            cfg = prepare(folder, args.good_runs, runs_per_class, args.image_size, args.batch_size)
            rows += [measure(cfg, folder, impl, args.inflate) for impl in impls]
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nVAL feature-cache build: default config, tiny backbones, image_size {args.image_size}, batch "
          f"{args.batch_size}, image tokens x{args.inflate} in width, CPU; one fresh process per build")
    print(f"{'implementation':16s}{'VAL runs':>9s}{'cache MB':>10s}{'RSS before MB':>15s}{'peak RSS MB':>13s}"
          f"{'growth MB':>11s}{'growth/cache':>14s}{'time s':>8s}")
    for row in rows:
        name = "after (stream)" if row["impl"] == "after" else f"before {row['impl']}"
        print(f"{name:16s}{row['samples']:9d}{row['cache_mb']:10.1f}{row['rss_before_build_mb']:15.0f}"
              f"{row['peak_rss_mb']:13.0f}{row['growth_mb']:11.1f}{row['growth_mb'] / row['cache_mb']:14.2f}"
              f"{row['seconds']:8.1f}")


if __name__ == "__main__":
    main()
