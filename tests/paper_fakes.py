"""Fabricated results files (the ARCHITECTURE results layout) for the paper tests.

Metric values follow a known formula so the tests can check that numbers land in the right cells:
i_auroc = BASE[method] + 0.01 * seed (+ 0.05 for paper_faithful), ap = i_auroc + 0.05, f1_max = i_auroc.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from weldfilm.config import prepare, run_config
from weldfilm.data.layout import CLASS_NAMES
from weldfilm.paper.results import RunKey, ablation_runs, main_runs

BASE = {"causal_film": 0.80, "late_fusion": 0.60, "m3dm": 0.70, "dinomaly": 0.65}
ABLATION_SHIFT = {"no_film": -0.10, "no_gram": 0.02}
ABSENT_CLASS = "crater_cracks"  # per-defect AUROC null: a class absent from TEST


def tiny_config(seeds=(0, 1)) -> dict:
    return prepare({"seeds": list(seeds), "ablations": {"no_film": {"causal_film.use_film": False},
                                                         "no_gram": {"loss.lambda_gram": 0.0}}})


def expected_i_auroc(key: RunKey) -> float:
    value = BASE[key.method] + 0.01 * key.seed + (0.05 if key.protocol == "paper_faithful" else 0.0)
    return value + ABLATION_SHIFT.get(key.ablation, 0.0)


def _scores(key: RunKey) -> pd.DataFrame:
    rng = np.random.default_rng(key.seed)  # the same noise for every method and ablation of a seed
    separation = BASE[key.method] + 3 * ABLATION_SHIFT.get(key.ablation, 0.0)
    rows = []
    for code, name in CLASS_NAMES.items():
        if name == ABSENT_CLASS:
            continue
        for i in range(4):
            label = 0 if code == 0 else 1
            rows.append({"sample_id": f"cfg/01-01-24-{code:02d}{i:02d}-{code:02d}", "class_code": code,
                         "class_name": name, "label": label, "score": label * separation + rng.normal(0, 0.3)})
    return pd.DataFrame(rows)


def write_run(results, key: RunKey, cfg: dict | None = None) -> None:
    run_dir = results / key.relative_dir()
    test_dir = run_dir / "eval" / "test"
    test_dir.mkdir(parents=True, exist_ok=True)
    i_auroc = expected_i_auroc(key)
    per_defect = {name: (None if name == ABSENT_CLASS else i_auroc - 0.01 * code)
                  for code, name in CLASS_NAMES.items() if code}
    metrics = {"split": "test", "n": 44, "i_auroc": i_auroc, "i_auroc_ci95": [i_auroc - 0.05, i_auroc + 0.04],
               "ap": i_auroc + 0.05, "f1_max": i_auroc, "per_defect_auroc": per_defect, "notes": [],
               "threshold": {"value": 0.5, "precision": 0.9, "recall": 0.8, "f1": 0.85}}
    (test_dir / "metrics.json").write_text(json.dumps(metrics))
    _scores(key).to_csv(test_dir / "scores.csv", index=False)
    describe = {"modalities": ["video", "audio"] if key.method != "dinomaly" else ["images"],
                "input_resolutions": {"video": [32, 64, 64]}, "augmentation": key.method == "causal_film",
                "selection_split": "val" if key.method == "causal_film" else "test", "method": key.method}
    if key.method == "late_fusion":
        describe["fusion"] = {"w_audio": 0.37, "weights": {"video": 0.63}}
    metadata = {"run": {"method": key.method, "seed": key.seed, "protocol": key.protocol, "ablation": key.ablation},
                "config": _run_config(cfg, key), "describe": describe, "selection_split": describe["selection_split"],
                "token_shapes": {"video": [2, 16, 32], "image": {"layer_1": [10, 5, 32]}}, "notes": []}
    (run_dir / "metadata.json").write_text(json.dumps(metadata))
    lines = [{"epoch": e, "lr": 1e-3, "loss": 1.0 / (e + 1), "cos": 0.5 / (e + 1), "gram": 0.1,
              "val_auroc": 0.5 + 0.05 * e, "extra_key": "x"} for e in range(4)]
    (run_dir / "train_log.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def _run_config(cfg: dict | None, key: RunKey) -> dict:
    """The run config the workflow would record for ``key`` ({} without a config)."""
    if cfg is None:
        return {}
    return run_config(cfg, key.method, key.seed, key.protocol, key.ablation)


def write_card_figure(results) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = results / "data" / "card" / "modalities.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [0, 1])
    fig.savefig(path)
    plt.close(fig)


def write_results(results, cfg) -> None:
    for key in main_runs(cfg) + ablation_runs(cfg):
        write_run(results, key, cfg)
    write_card_figure(results)
