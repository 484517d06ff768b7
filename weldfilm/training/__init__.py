"""The one training core: Trainer, schedules, EMA, checkpoints, seeding."""

from weldfilm.training.checkpoints import load_checkpoint, load_selected_weights, save_checkpoint
from weldfilm.training.ema import ModelEMA
from weldfilm.training.progress import progress
from weldfilm.training.schedules import (default_optimizer, warmup_cosine_scheduler, warmup_cosine_value)
from weldfilm.training.seeding import seed_everything, seeded_generator
from weldfilm.training.trainer import (FitResult, Trainer, TrainingDivergedError, autocast_context, move_to_device,
                                       score_loader)

__all__ = [
    "FitResult", "ModelEMA", "Trainer", "TrainingDivergedError", "autocast_context", "default_optimizer",
    "load_checkpoint", "load_selected_weights", "move_to_device", "progress", "save_checkpoint", "score_loader",
    "seed_everything", "seeded_generator", "warmup_cosine_scheduler", "warmup_cosine_value",
]
