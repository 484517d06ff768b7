"""The causal_film method: see weldfilm/methods/__init__.py."""
