"""All metrics of one scored split, in the ``metrics.json`` layout of ARCHITECTURE.md."""

from __future__ import annotations

import numpy as np

from weldfilm.errors import DataError
from weldfilm.metrics.image import (average_precision, bootstrap_auroc_ci, f1_max, has_both_classes, image_auroc,
                                    per_defect_auroc, threshold_metrics, youden_threshold)
from weldfilm.metrics.pixel import pixel_auroc_proxy
from weldfilm.metrics.pro import DEFAULT_LIMITS, aupro_proxy


def compute_metrics(labels, scores, class_codes, *, split: str = "", bootstrap: int = 1000, seed: int = 0,
                    pro_limits=DEFAULT_LIMITS, threshold: float | None = None, threshold_source: str | None = None,
                    maps: np.ndarray | None = None) -> dict:
    """I-AUROC (+ bootstrap CI), AP, F1-max, threshold metrics, per-defect AUROC and the pixel-metric proxies.

    Pixel metrics (no pixel masks exist: whole image = one GT region of a defective run):
    ``p_aupro_proxy`` for every method (the score-filled uniform maps of the authors' placeholder
    when ``maps`` is None); ``p_auroc_proxy`` (M3DM's pixel ROCAUC) only from a method's own maps,
    None without them (the authors' Causal-FiLM code reports no pixel ROCAUC; with uniform maps it
    would just repeat the I-AUROC).

    ``threshold`` given: apply it (chosen on ``threshold_source``, e.g. VAL); else pick Youden's on
    these scores (``threshold_source = split``, what the authors did on TEST).
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if len(labels) != len(scores) or len(scores) == 0:
        raise DataError(f"split {split}: {len(scores)} scores for {len(labels)} labels")
    if not np.isfinite(scores).all():
        raise DataError(f"split {split}: {int((~np.isfinite(scores)).sum())} scores are NaN/inf")
    if not has_both_classes(labels):
        raise DataError(f"split {split}: only one class among its {len(labels)} samples; I-AUROC is undefined "
                        "(check the manifest's split)")
    notes = ["binary label = class code != 0; higher score = more anomalous; defect when score >= threshold"]
    if threshold is None:
        threshold, threshold_source = youden_threshold(labels, scores), split
        notes.append(f"threshold: Youden-optimal on {split} itself (the authors' choice; optimistic)")
    else:
        notes.append(f"threshold: Youden-optimal on {threshold_source}, applied to {split}")
    if maps is not None and (len(maps) != len(scores) or not np.isfinite(maps).all()):
        raise DataError(f"split {split}: {len(maps)} anomaly maps for {len(scores)} scores, or maps with NaN/inf "
                        "values; re-score the run")
    pro = aupro_proxy(labels, scores, pro_limits, maps)
    notes.append("p_aupro_proxy: PROXY, no pixel masks exist: whole image = one GT region of a defective sample; "
                 + ("the method's own anomaly maps" if maps is not None else
                    "uniform maps filled with the image score (the authors' placeholder)"))
    p_auroc = None if maps is None else pixel_auroc_proxy(labels, maps)
    notes.append("p_auroc_proxy: PROXY (M3DM's pixel ROCAUC over every pixel of every map against all-one masks of "
                 "defective runs and all-zero masks of good ones) "
                 + ("from the method's own anomaly maps" if maps is not None else "n/a: the method gives no maps"))
    return {
        "split": split,
        "n": int(len(scores)),
        "n_defective": int(np.sum(labels != 0)),
        "n_good": int(np.sum(labels == 0)),
        "i_auroc": image_auroc(labels, scores),
        "i_auroc_ci95": bootstrap_auroc_ci(labels, scores, resamples=bootstrap, seed=seed),
        "bootstrap": {"resamples": int(bootstrap), "seed": int(seed), "stratified": True, "method": "percentile"},
        "ap": average_precision(labels, scores),
        "f1_max": f1_max(labels, scores),
        "threshold": {**threshold_metrics(labels, scores, threshold), "source_split": threshold_source},
        "per_defect_auroc": per_defect_auroc(class_codes, scores),
        "p_aupro_proxy": pro,
        "p_aupro_is_proxy": True,
        "p_auroc_proxy": p_auroc,
        "p_auroc_is_proxy": True,
        "notes": notes,
    }
