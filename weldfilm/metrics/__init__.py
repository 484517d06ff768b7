"""Metrics: image-level metrics, bootstrap CI, AU-PRO and pixel ROCAUC with their proxies, the metrics.json report."""

from weldfilm.metrics.image import (average_precision, binary_labels, bootstrap_auroc_ci, f1_max, image_auroc,
                                    per_defect_auroc, threshold_metrics, youden_threshold)
from weldfilm.metrics.pixel import pixel_auroc, pixel_auroc_proxy
from weldfilm.metrics.pro import DEFAULT_LIMITS, au_pro, aupro_proxy, pro_curve
from weldfilm.metrics.report import compute_metrics

__all__ = [
    "DEFAULT_LIMITS", "au_pro", "aupro_proxy", "average_precision", "binary_labels", "bootstrap_auroc_ci",
    "compute_metrics", "f1_max", "image_auroc", "per_defect_auroc", "pixel_auroc", "pixel_auroc_proxy", "pro_curve",
    "threshold_metrics", "youden_threshold",
]
