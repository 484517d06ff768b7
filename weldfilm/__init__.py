"""weldfilm: reproducible Causal-FiLM welding anomaly detection, baselines, ablations and paper."""

__version__ = "0.1.0"
