"""The paper's baselines (section 10.4), each a ``weldfilm.methods.Method`` found through the registry.

* ``late_fusion`` (audio AE + video AE, late z-score fusion): ``late_fusion.py`` + ``late_fusion_models.py``
* ``m3dm`` (DINO ViT + Point-MAE memory banks): ``m3dm.py`` and its ``m3dm_*`` modules
* ``dinomaly`` (image-only linear-attention reconstruction): ``dinomaly.py`` + ``dinomaly_model.py``, ``optim.py``

Modules are imported lazily by ``weldfilm.methods.get_method``; nothing is imported here.
"""
