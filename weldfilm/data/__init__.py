"""Data layer: real on-disk layout, manifest, validation, dataset, augmentation, synthetic data."""

from weldfilm.data.layout import CLASS_NAMES, RunRef, discover_runs

__all__ = ["CLASS_NAMES", "RunRef", "discover_runs"]
