"""Frozen backbones, tiny stand-ins and the pure nn.Modules of Causal-FiLM.

Import the submodules directly (``weldfilm.models.backbones``, ``weldfilm.models.causal_film``, ...);
this package imports nothing heavy on its own.
"""
