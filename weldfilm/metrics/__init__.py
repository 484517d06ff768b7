"""Metrics: image-level detection metrics, bootstrap CI, AU-PRO and its proxies, the metrics.json report."""

from weldfilm.metrics.image import (average_precision, binary_labels, bootstrap_auroc_ci, f1_max, image_auroc,
                                    per_defect_auroc, threshold_metrics, youden_threshold)
from weldfilm.metrics.pro import DEFAULT_LIMITS, au_pro, aupro_proxy, pro_curve
from weldfilm.metrics.report import compute_metrics

__all__ = [
    "DEFAULT_LIMITS", "au_pro", "aupro_proxy", "average_precision", "binary_labels", "bootstrap_auroc_ci",
    "compute_metrics", "f1_max", "image_auroc", "per_defect_auroc", "pro_curve", "threshold_metrics",
    "youden_threshold",
]
