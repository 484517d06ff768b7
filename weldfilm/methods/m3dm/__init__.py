"""The m3dm method: see weldfilm/methods/__init__.py."""
