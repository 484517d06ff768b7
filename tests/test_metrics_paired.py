"""Paired bootstrap of an I-AUROC difference (weldfilm/metrics/paired.py)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from weldfilm.metrics.image import bootstrap_auroc_ci
from weldfilm.metrics.paired import paired_auroc_delta


def _data(seed=0, n_good=40, n_bad=88, shift=1.0, n_seeds=3):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n_good, int), rng.integers(1, 12, n_bad)]
    scores = rng.normal(0, 1, (n_seeds, labels.size)) + shift * (labels > 0)
    return labels, scores


def test_identical_scores_give_zero_delta_and_zero_ci():
    labels, scores = _data()
    result = paired_auroc_delta(labels, scores, scores.copy(), resamples=300, seed=1)
    assert result.delta == 0.0 and (result.ci_lo, result.ci_hi) == (0.0, 0.0)
    assert not result.excludes_zero
    assert (result.n_seeds, result.n_runs, result.resamples) == (3, 128, 300)


def test_clearly_better_model_has_ci_above_zero_and_worse_below():
    labels, reference = _data(shift=0.5)
    rng = np.random.default_rng(5)
    better = reference + 2.0 * (labels > 0) + rng.normal(0, 0.1, reference.shape)
    up = paired_auroc_delta(labels, better, reference, resamples=500)
    down = paired_auroc_delta(labels, reference, better, resamples=500)
    assert up.ci_lo > 0 and up.excludes_zero and up.ci_lo <= up.delta <= up.ci_hi
    assert down.ci_hi < 0 and down.excludes_zero
    assert down.delta == pytest.approx(-up.delta)


def test_delta_is_the_mean_over_seeds_of_sklearn_auroc_differences():
    labels, a = _data(seed=2)
    _, b = _data(seed=3, shift=0.8)
    result = paired_auroc_delta(labels, a, b, resamples=50)
    expected = np.mean([roc_auc_score(labels > 0, a[k]) - roc_auc_score(labels > 0, b[k]) for k in range(3)])
    assert result.delta == pytest.approx(expected, abs=1e-12)


def test_pairing_narrows_the_interval_of_two_noisy_but_equal_models():
    """Two models that share most of their score (same runs, small own noise) differ little: the paired CI
    is far narrower than the single-model bootstrap CI would suggest, and contains 0."""
    labels, shared = _data(seed=4, shift=0.7, n_seeds=1)
    rng = np.random.default_rng(9)
    a = shared + rng.normal(0, 0.05, shared.shape)
    b = shared + rng.normal(0, 0.05, shared.shape)
    result = paired_auroc_delta(labels, a[0], b[0], resamples=1000)
    assert result.n_seeds == 1 and result.ci_lo <= 0 <= result.ci_hi
    assert result.ci_hi - result.ci_lo < 0.03
    single_lo, single_hi = bootstrap_auroc_ci(labels, a[0], resamples=1000)  # what the docstring compares with
    assert result.ci_hi - result.ci_lo < (single_hi - single_lo) / 3


def test_reproducible_with_a_seed_and_seed_dependent():
    labels, a = _data(seed=6)
    _, b = _data(seed=7)
    first = paired_auroc_delta(labels, a, b, resamples=200, seed=11)
    again = paired_auroc_delta(labels, a, b, resamples=200, seed=11)
    other = paired_auroc_delta(labels, a, b, resamples=200, seed=12)
    assert first == again
    assert (first.ci_lo, first.ci_hi) != (other.ci_lo, other.ci_hi)
    assert first.delta == other.delta


def test_bad_inputs_are_rejected():
    labels, a = _data()
    with pytest.raises(ValueError, match="both good and defective"):
        paired_auroc_delta(np.ones(128), a, a)
    with pytest.raises(ValueError, match="seed"):
        paired_auroc_delta(labels, a, a[:2])
    with pytest.raises(ValueError, match="n_runs"):
        paired_auroc_delta(labels, a[:, :10], a[:, :10])
    bad = a.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        paired_auroc_delta(labels, bad, a)
