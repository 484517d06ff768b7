"""The methods: one folder per method (glue + its own nets), ``base.py`` for what they share.

* ``causal_film/`` the proposed method: ``method.py`` (``CausalFiLMMethod``), ``model.py`` (the head)
  and its modules (``encoders``, ``film``, ``mamba``, ``decoder``, ``losses``)
* ``late_fusion/`` audio AE + video AE, late z-score fusion: ``method.py`` + ``model.py``
* ``m3dm/`` DINO ViT + Point-MAE memory banks: ``method.py``, ``bank.py``, ``coreset.py``, ``point.py``, ``cache.py``
* ``dinomaly/`` image-only linear-attention reconstruction: ``method.py``, ``model.py``, ``cache.py``

Method modules are imported only when ``weldfilm.methods.base.get_method`` is asked for them.
"""
