"""Peak RSS of one decoded-input store build (weldfilm.data.store.build_input_kind) at the paper profile's sizes.

Synthetic runs (1 s) whose FLACs are replaced by 45 s of noise at 192 kHz, so that the paper's STFT
(8193 x 1024 frames at hop 8192) decodes a full window; builds the TRAIN split of one kind and prints
the main process's peak RSS, the largest worker's and the rule's ``mem_mb`` (``store.build_mem_mb``).
Run it at two split sizes to see that the split adds nothing (rows are streamed to the file).

    python benchmarks/store_memory.py THREADS {stft,photos448,video} GOOD_RUNS
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

KIND_OF = {"stft": ("late_fusion", "stft"), "photos448": ("dinomaly", "photos"), "video": ("causal_film", "video")}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    threads, kind, good = int(argv[0]), argv[1], int(argv[2]) if len(argv) > 2 else 8
    import soundfile

    from weldfilm.config import DEFAULT_CONFIG, prepare, run_config
    from weldfilm.data import store
    from weldfilm.data.manifest import build_manifest
    from weldfilm.data.synthetic import generate

    with tempfile.TemporaryDirectory(prefix="weldfilm-store-memory-") as tmp:
        root, results = Path(tmp) / "data", Path(tmp) / "results"
        generate(root, seed=0, good_runs=good, runs_per_class=1, duration_s=1.0, workers=1)
        rng = np.random.default_rng(0)
        for flac in root.rglob("*.flac"):
            soundfile.write(flac, (0.1 * rng.standard_normal(45 * 192000)).astype(np.float32), 192000)
        raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
        raw["profile"] = "paper"
        cfg = prepare(raw)
        cfg = {**cfg, "results": str(results),
               "data": {**cfg["data"], "root": str(root), "paper_manifest": None, "max_train_good_runs": None}}
        (results / "data").mkdir(parents=True)
        build_manifest(root, results / "data" / "manifest.csv", seed=0)
        method, prefix = KIND_OF[kind]
        run = run_config(cfg, method, 0, "fair")
        spec = next(s for s in store._kinds_of(run, store.method_dataset_arguments(run, method))
                    if store.kind_label(s).startswith(prefix))
        path = store.store_file(results, store.kind_name(spec), "train")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        store.build_input_kind(run, spec, "train", path, threads=threads)
        wall = time.perf_counter() - start
        runs = np.load(path, mmap_mode="r").shape[0]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"{store.kind_label(spec)} threads={threads} runs={runs}: main {before:.0f} MB before, {peak:.0f} MB peak; "
          f"largest worker {worker:.0f} MB; {wall:.1f} s; rule mem_mb {store.build_mem_mb(spec, threads)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
