"""The late_fusion method: see weldfilm/methods/__init__.py."""
