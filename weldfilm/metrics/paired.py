"""Paired bootstrap of an I-AUROC difference between two models scored on the same runs.

Two models (an ablation and the full model, a baseline and Causal-FiLM) are scored on the same TEST
runs, once per training seed. Their I-AUROCs share the TEST sample, so the difference is measured
far more precisely than the two separate CIs suggest. ``paired_auroc_delta`` resamples the TEST runs
with replacement (stratified: defective and good runs apart, as ``bootstrap_auroc_ci`` does), applies
the *same* resample to both models and to every seed, and takes in each resample the mean over seeds
of ``AUROC(model) - AUROC(reference)``. The percentile interval of these resampled means is the 95 %
CI of Δ; it excludes 0 when the difference is larger than the TEST sample explains.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

from weldfilm.metrics.image import binary_labels, rank_auroc


@dataclass(frozen=True)
class PairedDelta:
    """Δ = mean over seeds of AUROC(model) - AUROC(reference), with its paired-bootstrap CI."""

    delta: float
    ci_lo: float
    ci_hi: float
    n_seeds: int
    n_runs: int
    resamples: int
    level: float

    @property
    def excludes_zero(self) -> bool:
        """True when the CI lies entirely above or below 0 (the difference is not sampling noise)."""
        return bool(self.ci_lo > 0.0 or self.ci_hi < 0.0)

    def as_dict(self) -> dict:
        return {**asdict(self), "excludes_zero": self.excludes_zero}


def _as_seed_matrix(scores, n_runs: int, what: str) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    arr = arr[None, :] if arr.ndim == 1 else arr
    if arr.ndim != 2 or arr.shape[1] != n_runs:
        raise ValueError(f"{what} must be (n_runs,) or (n_seeds, n_runs) with n_runs={n_runs}, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} holds NaN or infinite scores")
    return arr


def paired_auroc_delta(labels, scores, reference, resamples: int = 1000, seed: int = 0, level: float = 0.95,
                       chunk: int = 250) -> PairedDelta:
    """Δ I-AUROC of ``scores`` over ``reference`` with a stratified paired-bootstrap percentile CI.

    ``labels``: the runs' labels (0 good, else defective). ``scores`` and ``reference``: higher = more
    anomalous, shape ``(n_runs,)`` for one seed or ``(n_seeds, n_runs)``, row k of both from seed k and
    column j of both the same run. Every resample draws the good and the defective runs with
    replacement (each group keeps its size) and scores both models and every seed on that same draw.
    Seeded (``numpy.random.default_rng(seed)``): same inputs and seed, same interval.
    """
    y = binary_labels(labels)
    n_runs = y.size
    if y.sum() == 0 or y.sum() == n_runs:
        raise ValueError("paired AUROC difference needs both good and defective runs")
    a = _as_seed_matrix(scores, n_runs, "scores")
    b = _as_seed_matrix(reference, n_runs, "reference")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"scores have {a.shape[0]} seed(s), reference {b.shape[0]}: pair them seed by seed")
    if resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"need resamples >= 1 and 0 < level < 1, got {resamples}, {level}")
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    delta = float(np.mean([roc_auc_score(y, a[k]) - roc_auc_score(y, b[k]) for k in range(a.shape[0])]))
    rng = np.random.default_rng(seed)
    draws = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        pos_idx = pos[rng.integers(0, pos.size, size=(size, pos.size))]
        neg_idx = neg[rng.integers(0, neg.size, size=(size, neg.size))]
        per_seed = [rank_auroc(a[k][pos_idx], a[k][neg_idx]) - rank_auroc(b[k][pos_idx], b[k][neg_idx])
                    for k in range(a.shape[0])]
        draws.append(np.mean(per_seed, axis=0))
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(np.concatenate(draws), [alpha, 1.0 - alpha])
    return PairedDelta(delta=delta, ci_lo=float(lo), ci_hi=float(hi), n_seeds=int(a.shape[0]), n_runs=int(n_runs),
                       resamples=int(resamples), level=float(level))
