"""Pixel-level ROCAUC (M3DM's "pixel ROCAUC") and the spec's proxy of it (section 10.3.2).

M3DM pools every pixel of every test map into one list of (map value, mask value) pairs and
computes one ROC AUC over all of them (``roc_auc_score(pixel_labels, pixel_preds)``). The welding
data has no pixel masks: the authors' weld dataset gives a good run an all-zero mask and a
defective run an all-one mask, so the number is a **proxy** (it measures how well a map's pixels
separate defective runs from good ones, not localisation). ``pixel_auroc_proxy`` builds exactly
those masks from the run labels, the same whole-image regions the P-AUPRO proxy uses.

The AUROC is computed exactly as the Mann-Whitney statistic (ties count one half, identical to
scikit-learn's ``roc_auc_score``) without concatenating all pixels: the negative pixels are sorted
once and each map's positive pixels are counted against them with ``searchsorted``. Paper-size
TEST maps (1,732 x 224 x 224 = 87 M pixels) then need memory for the negatives only.
"""

from __future__ import annotations

import numpy as np


def _as_maps_and_masks(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(maps)
    masks = np.asarray(masks)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (N, H, W), got shape {maps.shape}")
    if masks.shape != maps.shape:
        masks = np.broadcast_to(masks, maps.shape)
    return maps, masks.astype(bool, copy=False)


def pixel_auroc(maps, masks) -> float:
    """ROC AUC over every pixel of every map: ``maps`` (N, H, W), ``masks`` (N, H, W) bool (or broadcastable).

    Equal to ``roc_auc_score(masks.ravel(), maps.ravel())``.
    """
    maps, masks = _as_maps_and_masks(maps, masks)
    negatives = np.concatenate([m[~k].astype(np.float64).ravel() for m, k in zip(maps, masks)])
    n_pos = int(masks.sum())
    if n_pos == 0 or negatives.size == 0:
        raise ValueError("pixel ROCAUC needs at least one positive and one negative pixel")
    if not np.isfinite(negatives).all() or not all(np.isfinite(m).all() for m in maps):
        raise ValueError("anomaly maps hold NaN/inf values; the pixel ROCAUC is undefined")
    negatives.sort()
    wins = 0.0  # sum over positive pixels of #(negatives below) + 0.5 #(negatives equal)
    for m, k in zip(maps, masks):
        positives = m[k].astype(np.float64).ravel()
        if positives.size:
            below = np.searchsorted(negatives, positives, side="left")
            not_above = np.searchsorted(negatives, positives, side="right")
            wins += float(below.sum()) + 0.5 * float((not_above - below).sum())
    return wins / (float(n_pos) * float(negatives.size))


def pixel_auroc_proxy(labels, maps) -> float:
    """The spec's pixel ROCAUC proxy: a defective run's mask is all ones, a good run's all zeros."""
    y = np.asarray(labels) != 0
    maps = np.asarray(maps)
    if maps.ndim != 3 or len(y) != len(maps):
        raise ValueError(f"{len(y)} labels for maps of shape {maps.shape}; expected one (H, W) map per label")
    return pixel_auroc(maps, y.reshape(-1, 1, 1))
