"""AU-PRO (MVTec AD definition) and the P-AUPRO proxies of the spec (section 9.3).

PRO at a threshold = mean over ground-truth regions (connected components) of the fraction of the
region's pixels at or above it; FPR = fraction of all ground-truth-negative pixels at or above it.
AU-PRO@L = area under PRO(FPR) for FPR in [0, L], divided by L.

The welding data has no pixel masks, so the spec's proxy treats the whole image as one region of an
anomalous sample (all-zero mask for a good one) and uses maps that are the sample's score everywhere
unless a method gives real maps. With uniform maps and whole-image regions the pixel resolution does
not change anything, so such maps are evaluated as 1x1 maps (identical to the authors' 224x224 ones).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

DEFAULT_LIMITS = (0.3, 0.1, 0.05, 0.01)


def pro_curve(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro) at every distinct threshold, from the highest score down; both start at 0."""
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks).astype(bool)
    if maps.shape != masks.shape:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} differ in shape")
    pro_weight = np.zeros(maps.shape, dtype=np.float64)
    regions = []
    for i in range(len(masks)):
        labelled, count = ndimage.label(masks[i])
        for region in range(1, count + 1):
            regions.append((i, labelled == region))
    negatives = int((~masks).sum())
    if not regions or negatives == 0:
        raise ValueError("AU-PRO needs at least one ground-truth region and one negative pixel")
    for i, region in regions:
        pro_weight[i][region] = 1.0 / (region.sum() * len(regions))
    fpr_weight = (~masks).astype(np.float64) / negatives
    order = np.argsort(-maps.ravel(), kind="stable")
    sorted_scores = maps.ravel()[order]
    fpr = np.cumsum(fpr_weight.ravel()[order])
    pro = np.cumsum(pro_weight.ravel()[order])
    last_of_tie = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    return np.r_[0.0, fpr[last_of_tie]], np.r_[0.0, pro[last_of_tie]]


def area_up_to(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Trapezoid area of pro(fpr) on [0, limit] (linear interpolation at the limit) divided by ``limit``."""
    fpr = np.minimum(fpr, 1.0)
    inside = fpr <= limit
    x, y = fpr[inside], pro[inside]
    if x[-1] < limit:
        nxt = np.argmax(fpr > limit) if (fpr > limit).any() else None
        if nxt is not None:
            x0, x1, y0, y1 = fpr[nxt - 1], fpr[nxt], pro[nxt - 1], pro[nxt]
            y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x, y = np.r_[x, limit], np.r_[y, y_limit]
    return float(np.trapezoid(y, x) / limit)


def au_pro(maps: np.ndarray, masks: np.ndarray, limits=DEFAULT_LIMITS) -> dict[str, float]:
    """AU-PRO at each FPR limit, keyed by ``str(limit)``."""
    fpr, pro = pro_curve(maps, masks)
    return {str(limit): area_up_to(fpr, pro, limit) for limit in limits}


def aupro_proxy(labels, scores, limits=DEFAULT_LIMITS, maps: np.ndarray | None = None) -> dict[str, float]:
    """The spec's P-AUPRO proxy: whole-image GT regions; uniform score maps unless ``maps`` (N, H, W) is given."""
    y = (np.asarray(labels) != 0)
    if maps is None:
        maps = np.asarray(scores, dtype=np.float64).reshape(-1, 1, 1)
    masks = np.broadcast_to(y.reshape(-1, 1, 1), maps.shape)
    return au_pro(maps, masks, limits)
