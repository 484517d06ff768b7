"""The dinomaly method: see weldfilm/methods/__init__.py."""
