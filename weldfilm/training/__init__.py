"""The one training core: Trainer, schedules, EMA, checkpoints, seeding."""

import importlib
import importlib.util

# name -> submodule; loaded on first use, so `weldfilm.training.progress` (used by torch-free jobs) imports no torch
_SUBMODULE = {
    "load_checkpoint": "checkpoints", "load_selected_weights": "checkpoints", "save_checkpoint": "checkpoints",
    "ModelEMA": "ema", "progress": "progress", "default_optimizer": "schedules", "warmup_cosine_scheduler": "schedules",
    "warmup_cosine_value": "schedules", "seed_everything": "seeding", "seeded_generator": "seeding",
    "FitResult": "trainer", "Trainer": "trainer", "TrainingDivergedError": "trainer", "autocast_context": "trainer",
    "move_to_device": "trainer", "score_loader": "trainer",
}

__all__ = [
    "FitResult", "ModelEMA", "Trainer", "TrainingDivergedError", "autocast_context", "default_optimizer",
    "load_checkpoint", "load_selected_weights", "move_to_device", "progress", "save_checkpoint", "score_loader",
    "seed_everything", "seeded_generator", "warmup_cosine_scheduler", "warmup_cosine_value",
]


def __getattr__(name: str):
    if name in _SUBMODULE:
        return getattr(importlib.import_module(f"weldfilm.training.{_SUBMODULE[name]}"), name)
    if importlib.util.find_spec(f"weldfilm.training.{name}") is not None:  # a submodule not imported yet
        return importlib.import_module(f"weldfilm.training.{name}")
    raise AttributeError(f"module 'weldfilm.training' has no attribute '{name}'")

