"""Command ``score``: a trained run scores new weld runs (folders in the real on-disk layout) and explains it.

``score_runs(run_dir, folders, out_json)`` rebuilds the run's method from its ``metadata.json`` (its own
config, preprocessing, backbones and selected checkpoint), reads each input folder
(``<run id>/<run id>.{csv,flac,avi}`` + ``images/``) with the dataset readers at the run's sizes, and
writes per input the anomaly score, the decision (``defective`` when score >= threshold, else
``good``), the threshold with where it came from, and an explanation:

- Causal-FiLM: each photo's view score (and, with max view pooling, the share of Z_res dimensions
  whose max it gives; padded views marked) and each process modality's influence: the score with the
  video or audio tokens replaced by their TRAIN mean (``--neutral train_mean``, default) or zeros,
  and with the sensor's FiLM set to identity (gamma 1, beta 0, as the ``no_sensor`` / ``no_film``
  ablations apply it); nothing is retrained. ``--saliency``: per photo a PNG of
  |d score / d DINOv3 patch tokens|.
- M3DM (first photo) and Dinomaly (every photo): the method's own anomaly map per photo as a PNG.
- Late Fusion: the audio and video autoencoder scores before fusion (raw and z-scored).

The threshold is the run's Youden threshold chosen on VAL, read from ``eval/<split>/metrics.json``
(``weldfilm evaluate`` writes it); a run evaluated only with ``evaluation.threshold_split: same``
has a threshold chosen on TEST, which the output says. The class code in a run id is never used
as a label (a new weld's class is unknown; any code 00..11 in its name is accepted).

Inputs are checked first with ``weldfilm validate``'s per-run check (every file opened); a missing
or broken file stops the command with the run, the file and what to do, before anything is
written. Outputs: ``OUT.json`` and, when there are PNGs, ``<OUT stem>_maps/<run id>/*.png`` (paths in
the JSON are relative to its folder); everything is written into a temporary sibling folder first
and moved into place only when complete (the maps folder first, the JSON last).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from weldfilm.errors import CheckpointError, ConfigError, DataError
from weldfilm.io import provenance, read_json, write_json

DECISIONS = ("good", "defective")
SALIENCY_LABEL = ("saliency (not an anomaly map): |d score / d DINOv3 patch tokens|, L2 over channels, summed over "
                  "the two result layers, per patch, bilinearly resized to the photo size")


# ---------------------------------------------------------------------------------------------- inputs
def input_runs(folders) -> tuple[Path, list]:
    """``(root, run refs)`` of the input run folders: ``root`` is their common parent folder, each
    ref's SUBDIRS is the folder relative to it. DataError for a missing folder, a folder not named
    like a run (its files carry its name) or a folder given twice."""
    from weldfilm.data.layout import RUN_ID_PATTERN, run_ref

    if not folders:
        raise DataError("no input run folder given (--input FOLDER [FOLDER ...])")
    paths = []
    for folder in folders:
        path = Path(folder).expanduser().resolve()
        if not path.is_dir():
            raise DataError(f"input {folder}: run folder {path} does not exist or is not a folder")
        if not RUN_ID_PATTERN.match(path.name):
            raise DataError(f"input {folder}: {path.name} is not a run folder name of the form MM-DD-YY-NNNN-CC "
                            "(shared/spec/dataset.md; its files are named after it); rename the folder")
        paths.append(path)
    if len(set(paths)) != len(paths):
        twice = sorted({str(p) for p in paths if paths.count(p) > 1})
        raise DataError(f"input run folder(s) given twice: {twice}")
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return root, [run_ref(p.relative_to(root).as_posix()) for p in paths]


def validate_inputs(cfg: dict, root: Path, runs) -> list[str]:
    """``weldfilm validate``'s check of every input run at the run config's sizes (and the method's own
    audio settings); raise DataError naming each unusable run and file. Returns the notes (e.g. fewer photos)."""
    from weldfilm.config import method_audio_settings
    from weldfilm.data.validate import DEFAULT_PREPROCESS, check_run
    from weldfilm.data.dataset import PREPROCESS_KEYS
    from weldfilm.training.progress import progress

    sizes = {**DEFAULT_PREPROCESS, **{k: v for k, v in cfg["preprocess"].items() if k in PREPROCESS_KEYS}}
    method_audio = method_audio_settings({**cfg, "methods": [cfg["run"]["method"]]})
    problems, notes = [], []
    for run in progress(runs, "validating input runs", unit="run"):
        result = check_run(root, run.subdir, sizes, cfg["data"].get("allow_missing_images", False), method_audio)
        problems += [p for p in dict.fromkeys(result["problems"].values()) if p not in problems]  # once per file
        notes += [f"{run.subdir}: {note}" for note in result["notes"]]
    if problems:
        shown = "\n  ".join(problems)
        raise DataError(f"input run(s) unusable, nothing was written:\n  {shown}\n"
                        "Fix or replace the named file(s), or leave the run out of --input.")
    return notes


def input_config(cfg: dict, root: Path) -> dict:
    """The run config reading the input runs: ``data.root`` = their common parent, nothing excluded."""
    out = copy.deepcopy(cfg)
    out["data"] = {**out["data"], "root": str(root), "exclude_runs": []}
    return out


def input_dataset(cfg: dict, root: Path, runs, modalities=None, **overrides):
    """A ``WeldingDataset`` of the input runs (a manifest-like frame, SPLIT TEST; never augmented)."""
    import pandas as pd

    from weldfilm.data.dataset import dataset_from_config

    frame = pd.DataFrame({"SUBDIRS": [r.subdir for r in runs], "SPLIT": "TEST",
                          "CLASS_CODE": [r.class_code for r in runs]})
    return dataset_from_config(input_config(cfg, root), "test", augment=False, modalities=modalities,
                               manifest=frame, **overrides)


# ------------------------------------------------------------------------------------------ threshold
def run_threshold(run_dir) -> dict:
    """The run's decision threshold from ``eval/<split>/metrics.json``: the one chosen on VAL when any
    evaluation recorded it (``eval/test`` with ``threshold_split: val``, or ``eval/val`` itself), else
    the one chosen on the scored split (``threshold_split: same``). CheckpointError when none exists."""
    run_dir = Path(run_dir)
    found = []
    for split in ("test", "val", "train"):
        path = run_dir / "eval" / split / "metrics.json"
        if path.is_file():
            threshold = read_json(path, "metrics file").get("threshold")
            if not isinstance(threshold, dict) or "value" not in threshold:
                raise CheckpointError(f"run {run_dir}: {path} holds no threshold value; re-run `weldfilm evaluate "
                                      f"--run {run_dir} --split {split} --out {path.parent}`")
            found.append((path, threshold))
    if not found:
        raise CheckpointError(f"run {run_dir} has no eval/<split>/metrics.json with a threshold; run "
                              f"`weldfilm evaluate --run {run_dir} --split val --out {run_dir}/eval/val` first")
    on_val = [(p, t) for p, t in found if t.get("source_split") == "val"]
    path, threshold = (on_val or found)[0]
    source = threshold.get("source_split")
    return {"value": float(threshold["value"]), "source_split": source,
            "rule": f"Youden's J (max TPR - FPR) on the {str(source).upper()} scores of run {run_dir}",
            "run": str(run_dir), "metrics_file": str(path),
            "decision_rule": "defective when score >= threshold",
            "note": None if source == "val" else
            f"the run was evaluated with evaluation.threshold_split: same: threshold chosen on {source} itself"}


# ------------------------------------------------------------------------------------------ pictures
def save_png(path: Path, values: np.ndarray, label: str, size: int | None = None) -> dict:
    """A 2-D map as a false-colour PNG (min..max of the map), ``label`` in the PNG's Description."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    import torch.nn.functional as F

    values = np.asarray(values, dtype=np.float32)
    if size is not None and values.shape != (size, size):
        values = F.interpolate(torch.from_numpy(values)[None, None], size=(size, size), mode="bilinear",
                               align_corners=False)[0, 0].numpy()
    lo, hi = float(values.min()), float(values.max())
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, values, cmap="inferno", vmin=lo, vmax=hi if hi > lo else lo + 1e-12, format="png",
               metadata={"Title": path.stem, "Description": label})
    return {"min": lo, "max": hi, "shape": list(values.shape)}


def photo_names(root: Path, run) -> list[str]:
    from weldfilm.data.readers import list_images

    return [p.name for p in list_images(run.files(root)["images"])]


# ------------------------------------------------------------------------------------ per method
def _explain_causal_film(method, cfg, root, runs, maps_dir, neutral, saliency):
    results = method.explain_inputs(input_dataset(cfg, root, runs, method.modalities), neutral, saliency)
    size = cfg["preprocess"]["image_size"]
    out = {}
    for run, result in zip(runs, results):
        names = photo_names(root, run)
        views = [{**view, "photo": names[view["index"]] if view["index"] < len(names) else None}
                 for view in result["views"]]
        pooled = [v for v in views if v["pooled"]]
        driver = (max(pooled, key=lambda v: v["max_share"]) if cfg["causal_film"]["view_pooling"] == "max"
                  else max(pooled, key=lambda v: v["score"]))
        explanation = {
            "views": views,
            "view_pooling": cfg["causal_film"]["view_pooling"],
            "driving_view": driver["index"],
            "driving_view_rule": ("the view giving the largest share of Z_res dimensions in the max over views"
                                  if cfg["causal_film"]["view_pooling"] == "max" else
                                  "mean view pooling: every pooled view counts; the highest view score is named"),
            "view_score": "anomaly score with that view alone as Z_res (same Z_pred)",
            "modalities": result["modalities"],
            "neutralisation": {
                "video": f"video tokens replaced by {_neutral_text(neutral)}",
                "audio": f"audio tokens replaced by {_neutral_text(neutral)}",
                "sensor": "FiLM set to identity (gamma 1, beta 0), as the no_sensor / no_film ablations",
                "influence": "score - score with the modality neutralised (no retraining); None: not in this model"},
        }
        if saliency:
            files = []
            for index, grid in enumerate(result["saliency"]):
                rel = Path(maps_dir.name) / run.run_id / f"saliency_{index}_{Path(names[index]).stem}.png"
                info = save_png(maps_dir.parent / rel, grid, SALIENCY_LABEL, size)
                files.append({"photo": names[index], "png": rel.as_posix(), "kind": "saliency", **info})
            explanation["saliency"] = {"label": SALIENCY_LABEL, "maps": files}
        out[run.subdir] = (result["score"], explanation)
    return out


def _neutral_text(neutral: str) -> str:
    return ("their mean over the normal TRAIN runs (per token position)" if neutral == "train_mean"
            else "zeros")


def _explain_m3dm(method, cfg, root, runs, maps_dir):
    frame, maps = method.score_inputs(input_dataset(cfg, root, runs, **method.input_overrides()))
    out = {}
    for i, (run, row) in enumerate(zip(runs, frame.itertuples(index=False))):
        first = photo_names(root, run)[0]
        rel = Path(maps_dir.name) / run.run_id / f"anomaly_map_{Path(first).stem}.png"
        label = "M3DM fused anomaly map (seg fuser over the point and RGB patch distances), first photo"
        info = save_png(maps_dir.parent / rel, maps[i], label)
        out[run.subdir] = (float(row.score), {
            "modality_scores": {"point": float(row.score_point), "rgb": float(row.score_rgb)},
            "maps": [{"photo": first, "png": rel.as_posix(), "kind": "anomaly_map", **info}],
            "note": "M3DM reads the first photo (by name) and the sensor table as a pseudo point cloud"})
    return out


def _explain_dinomaly(method, cfg, root, runs, maps_dir):
    results = method.score_inputs(input_dataset(cfg, root, runs, **method.input_overrides()))
    out = {}
    for run, result in zip(runs, results):
        names, files = photo_names(root, run), []
        for index, (grid, image_score) in enumerate(zip(result["maps"], result["image_scores"])):
            rel = Path(maps_dir.name) / run.run_id / f"anomaly_map_{index}_{Path(names[index]).stem}.png"
            info = save_png(maps_dir.parent / rel, grid, "Dinomaly anomaly map (blurred 1 - cos, encoder vs decoder)")
            files.append({"photo": names[index], "image_score": image_score, "png": rel.as_posix(),
                          "kind": "anomaly_map", **info})
        out[run.subdir] = (result["score"], {
            "maps": files, "run_score": f"{method.section['run_aggregation']} of the photos' image scores"})
    return out


def _explain_late_fusion(method, cfg, root, runs):
    from weldfilm.methods.late_fusion.method import BRANCHES

    datasets = {b: input_dataset(cfg, root, runs, **method.input_overrides(b)) for b in BRANCHES}
    result = method.score_inputs(datasets)
    out = {}
    for i, run in enumerate(runs):
        out[run.subdir] = (float(result["score"][i]), {
            "before_fusion": {b: {"score": float(result[b][i]), "z": float(result[f"{b}_z"][i])} for b in BRANCHES},
            "fusion": {"w_audio": result["w_audio"], "w_video": result["w_video"],
                       "weights_from": result["weights_from"],
                       "rule": "score = w_audio * z(audio) + w_video * z(video), z with the TRAIN statistics"}})
    return out


# ------------------------------------------------------------------------------------------ command
def score_runs(run_dir, folders, out_json, saliency: bool = False, neutral: str = "train_mean") -> dict:
    """Score the weld run ``folders`` with the trained run ``run_dir``; write ``out_json`` (+ PNGs); return the report."""
    from weldfilm.evaluation import load_trained_method

    run_dir, out_json = Path(run_dir), Path(out_json)
    root, runs = input_runs(folders)
    metadata = read_json(run_dir / "metadata.json", "run metadata")
    cfg = metadata["config"]
    name = cfg["run"]["method"]
    if saliency and name != "causal_film":
        raise ConfigError(f"--saliency is for Causal-FiLM runs only; {run_dir} is a {name} run "
                        "(M3DM and Dinomaly write their anomaly maps anyway)")
    if neutral not in ("train_mean", "zeros"):
        raise ConfigError(f"--neutral must be train_mean or zeros, got {neutral!r}")
    threshold = run_threshold(run_dir)
    notes = validate_inputs(cfg, root, runs)
    _, method = load_trained_method(run_dir)

    out_json.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_json.name}.", dir=out_json.parent))
    maps_dir = staging / f"{out_json.stem}_maps"
    try:
        if name == "causal_film":
            explained = _explain_causal_film(method, cfg, root, runs, maps_dir, neutral, saliency)
        elif name == "m3dm":
            explained = _explain_m3dm(method, cfg, root, runs, maps_dir)
        elif name == "dinomaly":
            explained = _explain_dinomaly(method, cfg, root, runs, maps_dir)
        else:
            explained = _explain_late_fusion(method, cfg, root, runs)
        inputs = []
        for run in runs:
            score, explanation = explained[run.subdir]
            if not np.isfinite(score):
                raise DataError(f"run {run.subdir}: {root / run.subdir}: the score is not finite ({score}); "
                                "check the run's files")
            inputs.append({"input": str(root / run.subdir), "run_id": run.run_id,
                           "class_code_in_name": run.class_code, "score": float(score),
                           "decision": DECISIONS[int(score >= threshold["value"])],
                           "threshold": threshold["value"], "explanation": explanation})
        report = {"run": str(run_dir), "method": name, "run_config": cfg["run"], "threshold": threshold,
                  "n_inputs": len(inputs), "inputs": inputs,
                  "notes": notes + ["class_code_in_name: the code in the run id, never used as a label",
                                    "score: higher = more anomalous, the method's run score as in scores.csv"],
                  "provenance": provenance(cfg, run_dir=str(run_dir),
                                           metadata_config_hash=metadata["provenance"].get("config_hash"))}
        write_json(staging / out_json.name, report)
        _publish(staging, out_json, maps_dir.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _publish(staging: Path, out_json: Path, maps_name: str) -> None:
    """Move the staged maps folder, then the JSON, into place (an old maps folder is replaced)."""
    target = out_json.parent / maps_name
    old = None
    if target.exists():
        old = staging / ".old_maps"
        os.replace(target, old)
    if (staging / maps_name).exists():
        os.replace(staging / maps_name, target)
    os.replace(staging / out_json.name, out_json)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def add_cli_arguments(parser) -> None:
    parser.add_argument("--run", required=True, help="a trained run directory (metadata.json, checkpoints, eval/)")
    parser.add_argument("--input", required=True, nargs="+", metavar="WELD_RUN_FOLDER",
                        help="run folders in the real layout (<run id>/<run id>.{csv,flac,avi}, images/)")
    parser.add_argument("--out", required=True, help="JSON report; PNGs go to <stem>_maps/ beside it")
    parser.add_argument("--saliency", action="store_true",
                        help="Causal-FiLM: also write a saliency PNG per photo (gradient w.r.t. DINOv3 patch tokens)")
    parser.add_argument("--neutral", default="train_mean", choices=["train_mean", "zeros"],
                        help="Causal-FiLM modality influence: replace a process branch's tokens by this")


def cli(args) -> int:
    report = score_runs(args.run, args.input, args.out, saliency=args.saliency, neutral=args.neutral)
    defective = sum(item["decision"] == "defective" for item in report["inputs"])
    print(f"scored {report['n_inputs']} run(s) with {report['method']} ({args.run}): {defective} defective at "
          f"threshold {report['threshold']['value']:.4g} (from {report['threshold']['source_split']}); wrote {args.out}")
    return 0
