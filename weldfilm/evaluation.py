"""Command ``evaluate``: score a trained run on a split, write ``scores.csv`` and ``metrics.json``.

The method is rebuilt from the run's stored config (``metadata.json``), labels and class codes come
from the manifest (joined on SUBDIRS = sample_id). With ``evaluation.threshold_split: val`` the
Youden threshold is chosen on VAL and applied to the scored split (fair); with ``same`` it is chosen
on the scored split itself (what the authors did on TEST). Which one was used is recorded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from weldfilm.errors import DataError
from weldfilm.io import atomic_path, provenance, read_json, write_json
from weldfilm.metrics import compute_metrics, youden_threshold
from weldfilm.paths import manifest_path
from weldfilm.runner import METADATA

SCORE_COLUMNS = ["sample_id", "class_code", "class_name", "label", "score"]


def labelled_scores(cfg: dict, scores: pd.DataFrame, split: str) -> pd.DataFrame:
    """``scores`` joined with the manifest: sample_id, class_code, class_name, label, score (every run of the split once)."""
    from weldfilm.data.layout import CLASS_NAMES, binary_label
    from weldfilm.data.manifest import read_manifest

    manifest = read_manifest(manifest_path(cfg))
    rows = manifest[manifest["SPLIT"].str.upper() == split.upper()]
    rows = rows[~rows["SUBDIRS"].isin(set(cfg["data"].get("exclude_runs", [])))]
    codes = dict(zip(rows["SUBDIRS"], rows["CLASS_CODE"].astype(int)))
    ids = scores["sample_id"].tolist()
    unknown = sorted(set(ids) - set(codes))
    if unknown or len(set(ids)) != len(ids):
        raise DataError(f"split {split}: scores name runs not in the manifest split or twice: {unknown[:5]}; "
                        "re-train the run against the current manifest")
    missing = sorted(set(codes) - set(ids))
    if missing:
        raise DataError(f"split {split}: {len(missing)} manifest runs were not scored, e.g. {missing[:5]}")
    out = pd.DataFrame({"sample_id": ids, "class_code": [codes[i] for i in ids]})
    out["class_name"] = out["class_code"].map(CLASS_NAMES)
    out["label"] = out["class_code"].map(binary_label)
    out["score"] = scores["score"].to_numpy(dtype=np.float64)
    return out[SCORE_COLUMNS]


def load_trained_method(run_dir):
    """The method of a trained run, rebuilt from its ``metadata.json`` (config, feature cache) by
    ``weldfilm.methods.build_method``; returns ``(metadata, method)``."""
    from weldfilm.methods import build_method

    metadata = read_json(Path(run_dir) / METADATA, "run metadata")
    return metadata, build_method(metadata["config"], run_dir, feature_dir=metadata.get("feature_dir"))


def evaluate_run(run_dir, split: str, out_dir) -> dict:
    """Score ``split`` with the run's selected checkpoint; write ``out_dir/{scores.csv,metrics.json}``."""
    return evaluate_splits(run_dir, [split], {split: out_dir})[split.lower()]


def evaluate_splits(run_dir, splits, out_dirs: dict, method=None) -> dict:
    """Evaluate several splits with one method object: each split (VAL too, when its threshold is
    applied to another split) is scored once. ``out_dirs`` maps split -> output folder.

    ``method``: the object that just trained the run (``weldfilm.runner.fit_run``), so the job that
    trained it also scores it without rebuilding it; by default it is rebuilt from ``metadata.json``.
    Either way the selected checkpoint on disk is what is scored.
    """
    run_dir = Path(run_dir)
    if method is None:
        metadata, method = load_trained_method(run_dir)
    else:
        metadata = read_json(run_dir / METADATA, "run metadata")
    first_note = len(method.notes)  # notes of the training itself are in metadata.json already
    cfg = metadata["config"]
    ev = cfg["evaluation"]
    scored: dict[str, pd.DataFrame] = {}

    def table_of(split: str) -> pd.DataFrame:
        if split not in scored:
            scored[split] = labelled_scores(cfg, method.score(split), split)
        return scored[split]

    results = {}
    for split, out_dir in ((s.lower(), Path(out_dirs[s])) for s in splits):
        table = table_of(split)
        threshold, source = None, None
        if ev.get("threshold_split", "val") == "val" and split != "val":
            val = table_of("val")
            threshold, source = youden_threshold(val["label"], val["score"]), "val"
        metrics = compute_metrics(table["label"], table["score"], table["class_code"], split=split,
                                  bootstrap=ev.get("bootstrap", 1000), seed=ev.get("bootstrap_seed", 0),
                                  pro_limits=ev.get("aupro_limits", (0.3, 0.1, 0.05, 0.01)), threshold=threshold,
                                  threshold_source=source, maps=method.anomaly_maps(split))
        metrics["run"] = cfg["run"]
        metrics["selection_split"] = metadata.get("selection_split")
        metrics["notes"] += list(method.notes[first_note:])
        metrics["provenance"] = provenance(cfg, run_dir=str(run_dir),
                                           metadata_config_hash=metadata["provenance"].get("config_hash"))
        with atomic_path(out_dir / "scores.csv") as tmp:
            table.to_csv(tmp, index=False)
        write_json(out_dir / "metrics.json", metrics)
        results[split] = metrics
    return results


def add_cli_arguments(parser) -> None:
    parser.add_argument("--run", required=True, help="a trained run directory (holds metadata.json)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--out", required=True, help="output folder for scores.csv and metrics.json")


def cli(args) -> int:
    metrics = evaluate_run(args.run, args.split, args.out)
    lo, hi = metrics["i_auroc_ci95"]
    print(f"{args.split}: I-AUROC {metrics['i_auroc']:.4f} [{lo:.4f}, {hi:.4f}], AP {metrics['ap']:.4f}, "
          f"F1-max {metrics['f1_max']:.4f} (n={metrics['n']})")
    return 0
