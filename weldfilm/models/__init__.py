"""What every method shares: the frozen backbones (``backbones.py``) and their tiny / paper-size
builders (``tiny.py``, ``sizes.py``). A method's own nets live in its folder below ``weldfilm/methods/``.

Import the submodules directly; this package imports nothing heavy on its own.
"""
