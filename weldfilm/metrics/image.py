"""Image-level metrics (scikit-learn for ROC/PR): I-AUROC, AP, F1-max, Youden threshold, per-defect AUROC, bootstrap CI.

Labels follow the authors' code: binary label = ``label != 0``; a higher score means more anomalous,
and a sample is called anomalous when ``score >= threshold`` (scikit-learn's convention).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from weldfilm.data.layout import CLASS_NAMES


def binary_labels(labels) -> np.ndarray:
    return (np.asarray(labels) != 0).astype(np.int64)


def has_both_classes(labels) -> bool:
    return len(np.unique(binary_labels(labels))) == 2


def image_auroc(labels, scores) -> float:
    return float(roc_auc_score(binary_labels(labels), np.asarray(scores, dtype=np.float64)))


def average_precision(labels, scores) -> float:
    return float(average_precision_score(binary_labels(labels), np.asarray(scores, dtype=np.float64)))


def f1_max(labels, scores) -> float:
    """The best F1 over every threshold of the precision-recall curve."""
    precision, recall, _ = precision_recall_curve(binary_labels(labels), np.asarray(scores, dtype=np.float64))
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


def youden_threshold(labels, scores) -> float:
    """The ROC threshold maximising Youden's J = TPR - FPR (the artificial +inf point excluded)."""
    fpr, tpr, thresholds = roc_curve(binary_labels(labels), np.asarray(scores, dtype=np.float64))
    finite = np.isfinite(thresholds)
    j = np.where(finite, tpr - fpr, -np.inf)
    return float(thresholds[int(np.argmax(j))])


def threshold_metrics(labels, scores, threshold: float) -> dict:
    """Precision, recall and F1 when ``score >= threshold`` is called a defect."""
    y = binary_labels(labels)
    predicted = np.asarray(scores, dtype=np.float64) >= threshold
    tp = int(np.sum(predicted & (y == 1)))
    fp = int(np.sum(predicted & (y == 0)))
    fn = int(np.sum(~predicted & (y == 1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"value": float(threshold), "precision": precision, "recall": recall, "f1": f1}


def per_defect_auroc(class_codes, scores) -> dict[str, float | None]:
    """AUROC of good (code 0) against each defect class alone; None where the class (or good) is absent."""
    codes = np.asarray(class_codes)
    scores = np.asarray(scores, dtype=np.float64)
    good = codes == 0
    out: dict[str, float | None] = {}
    for code, name in CLASS_NAMES.items():
        if code == 0:
            continue
        defect = codes == code
        if not good.any() or not defect.any():
            out[name] = None
            continue
        keep = good | defect
        out[name] = float(roc_auc_score(defect[keep].astype(np.int64), scores[keep]))
    return out


def rank_auroc(pos_scores: np.ndarray, neg_scores: np.ndarray) -> np.ndarray:
    """AUROC of each row (Mann-Whitney U with mid-ranks for ties); inputs ``(B, n_pos)`` and ``(B, n_neg)``."""
    n_pos, n_neg = pos_scores.shape[-1], neg_scores.shape[-1]
    ranks = rankdata(np.concatenate([pos_scores, neg_scores], axis=-1), axis=-1)
    return (ranks[..., :n_pos].sum(axis=-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def bootstrap_auroc_ci(labels, scores, resamples: int = 1000, seed: int = 0, level: float = 0.95,
                       chunk: int = 200) -> list[float]:
    """Percentile CI of I-AUROC over stratified bootstrap resamples (good and defective resampled apart).

    Seeded (``numpy.random.default_rng(seed)``): the same inputs and seed give the same interval.
    """
    y = binary_labels(labels)
    scores = np.asarray(scores, dtype=np.float64)
    pos, neg = scores[y == 1], scores[y == 0]
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        pos_draw = pos[rng.integers(0, len(pos), size=(size, len(pos)))]
        neg_draw = neg[rng.integers(0, len(neg), size=(size, len(neg)))]
        values.append(rank_auroc(pos_draw, neg_draw))
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(np.concatenate(values), [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]
