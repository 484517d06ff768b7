"""The methods: one folder per method (glue + its own nets), ``base.py`` for what they share, and the
registry (here, importable without torch: the config and the Snakefile read the method list from it).

* ``causal_film/`` the proposed method: ``method.py`` (``CausalFiLMMethod``), ``model.py`` (the head)
  and its modules (``encoders``, ``film``, ``mamba``, ``decoder``, ``losses``)
* ``late_fusion/`` audio AE + video AE, late z-score fusion: ``method.py`` + ``model.py``
* ``m3dm/`` DINO ViT + Point-MAE memory banks: ``method.py``, ``bank.py``, ``coreset.py``, ``point.py``, ``cache.py``
* ``dinomaly/`` image-only linear-attention reconstruction: ``method.py``, ``model.py``, ``cache.py``

A new method is one folder, one ``REGISTRY`` line and its config section (schema + ``weldfilm.run_keys``).
Every method is built the same way: ``build_method(run_cfg, run_dir, device=None, feature_dir=None)``.
A method module is imported only when ``get_method`` is asked for it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from weldfilm.errors import ConfigError


@dataclass(frozen=True)
class MethodEntry:
    """One registered method: its class (``module:Class``) and the workflow facts that depend on it."""

    target: str
    feature_cache: bool = False  # reads the frozen-backbone feature cache (weldfilm.features; rule features)
    ablations: bool = False      # the config's ``ablations`` are runs of this method


REGISTRY: dict[str, MethodEntry] = {
    "causal_film": MethodEntry("weldfilm.methods.causal_film.method:CausalFiLMMethod", feature_cache=True,
                               ablations=True),
    "late_fusion": MethodEntry("weldfilm.methods.late_fusion.method:LateFusionMethod"),
    "m3dm": MethodEntry("weldfilm.methods.m3dm.method:M3DMMethod"),
    "dinomaly": MethodEntry("weldfilm.methods.dinomaly.method:DinomalyMethod"),
}
METHOD_NAMES: tuple[str, ...] = tuple(REGISTRY)
ABLATION_METHOD: str = next(name for name, entry in REGISTRY.items() if entry.ablations)
FEATURE_CACHE_METHODS: tuple[str, ...] = tuple(name for name, entry in REGISTRY.items() if entry.feature_cache)


def get_method(name: str):
    """The Method class registered as ``name`` (imported only now, so unused methods cost nothing)."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown method '{name}'; known: {', '.join(REGISTRY)}")
    module_name, class_name = REGISTRY[name].target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_method(run_cfg: dict, run_dir, device=None, feature_dir=None):
    """The one way to build a method: the class named by ``run_cfg['run']['method']`` (a config from
    ``weldfilm.config.run_config``) working in ``run_dir``. ``device`` None = ``train.device``;
    ``feature_dir``: the feature-cache folder of a method that reads one (None = the config's default),
    ignored by the others."""
    if "run" not in run_cfg:
        raise ConfigError("build_method needs a run config (weldfilm.config.run_config): key 'run' is missing")
    method_cls = get_method(run_cfg["run"]["method"])
    return method_cls(run_cfg, Path(run_dir), device=device, feature_dir=feature_dir)
