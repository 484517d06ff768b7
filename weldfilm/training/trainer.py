"""The one training loop of the project: any head with ``training_losses`` / ``anomaly_scores``.

Causal-FiLM and every gradient-trained baseline are fitted here: optimiser (the head's own via
``configure_optimizer`` or AdamW + warmup/cosine), EMA, AMP (CUDA only), gradient clipping, selection
on the validation loader's I-AUROC (or a loss), early stopping, ``best.pt`` / ``last.pt``, exact
resume from ``last.pt`` and the JSON-lines log ``train_log.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from weldfilm.errors import ConfigError, WeldfilmError
from weldfilm.io import write_text
from weldfilm.training.checkpoints import load_checkpoint, load_module_state, save_checkpoint
from weldfilm.training.ema import ModelEMA
from weldfilm.training.progress import progress
from weldfilm.training.schedules import default_optimizer
from weldfilm.training.seeding import capture_rng_state, restore_rng_state, seed_everything

SELECT_ON = ("auroc", "loss")


class TrainingDivergedError(WeldfilmError):
    """The loss became NaN or infinite."""


@dataclass
class FitResult:
    """What a fit returns (and what ``last.pt`` remembers)."""

    selection: str                 # "val_auroc", "val_loss" or "train_loss"
    best_epoch: int
    best_metric: float
    epochs_run: int
    stopped_early: bool
    resumed_from_epoch: int | None
    best_checkpoint: str
    last_checkpoint: str
    notes: list[str] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)

    def to_dict(self, with_history: bool = False) -> dict:
        out = asdict(self)
        if not with_history:
            out.pop("history")
        return out


def move_to_device(batch, device: torch.device):
    """Tensors (also inside dicts/lists) to ``device``; everything else unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: move_to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return type(batch)(move_to_device(value, device) for value in batch)
    return batch


def autocast_context(device: torch.device, train_cfg: dict):
    """bf16/fp16 autocast on CUDA when ``mixed_precision`` is on; a no-op everywhere else."""
    if device.type == "cuda" and train_cfg.get("mixed_precision", False):
        dtype = torch.bfloat16 if train_cfg.get("amp_dtype", "fp16") == "bf16" else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)
    return contextlib.nullcontext()


@torch.no_grad()
def score_loader(model: nn.Module, loader, device: torch.device, train_cfg: dict | None = None,
                 desc: str = "score") -> dict:
    """Anomaly scores of every sample of ``loader`` in eval mode: ``{"sample_id", "score", "label"}``.

    ``label`` is None when the batches carry no ``label``; ``sample_id`` is None without ids. A pass
    that lasts longer than the progress interval shows its rate and ETA in the log (``desc``).
    """
    was_training = model.training
    model.eval()
    scores, labels, ids = [], [], []
    try:
        for batch in progress(loader, desc, unit="batch", nested=True):
            batch = move_to_device(batch, device)
            with autocast_context(device, train_cfg or {}):
                out = model.anomaly_scores(batch)
            scores.append(out.detach().float().reshape(-1).cpu())
            if "label" in batch:
                labels.append(torch.as_tensor(batch["label"]).reshape(-1).cpu())
            if "sample_id" in batch:
                ids.extend(batch["sample_id"])
    finally:
        model.train(was_training)
    return {
        "score": torch.cat(scores).numpy().astype(np.float64) if scores else np.zeros(0),
        "label": torch.cat(labels).numpy().astype(np.int64) if labels else None,
        "sample_id": ids or None,
    }


def set_epoch(loader, epoch: int) -> None:
    """Tell the (possibly wrapped) dataset the epoch, so seeded augmentation varies per epoch."""
    dataset = getattr(loader, "dataset", None)
    while dataset is not None:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
            return
        dataset = getattr(dataset, "dataset", None)


RESUME_ONLY_KEYS = ("optimizer", "scheduler", "scaler", "rng")  # in last.pt, not in best.pt


class Trainer:
    """Fits one head; ``prefix`` lets one run dir hold several sub-models (files ``<prefix>best.pt``...)."""

    def __init__(self, run_dir, train_cfg: dict, device, seed: int, prefix: str = ""):
        self.run_dir = Path(run_dir)
        self.cfg = dict(train_cfg)
        self.device = torch.device(device)
        self.seed = int(seed)
        self.prefix = prefix
        self.best_path = self.run_dir / "checkpoints" / f"{prefix}best.pt"
        self.last_path = self.run_dir / "checkpoints" / f"{prefix}last.pt"
        self.log_path = self.run_dir / "train_log.jsonl"

    # ----------------------------------------------------------------------------------------- fit
    def fit(self, head: nn.Module, train_loader, val_loader=None, resume: bool = False,
            select_on: str = "auroc") -> FitResult:
        """Train ``head`` for ``train_cfg['epochs']`` epochs (or until early stopping); see the module doc."""
        if select_on not in SELECT_ON:
            raise ConfigError(f"select_on must be one of {SELECT_ON}, got '{select_on}'")
        selection = ("val_" if val_loader is not None else "train_") + ("auroc" if select_on == "auroc" and
                                                                       val_loader is not None else "loss")
        epochs = int(self.cfg["epochs"])
        notes = self._amp_notes()
        head.to(self.device)
        seed_everything(self.seed)
        params = [p for p in head.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(f"{self.run_dir}: the head {type(head).__name__} has no trainable parameter")
        if hasattr(head, "configure_optimizer"):
            optimizer, scheduler, interval = head.configure_optimizer(self.cfg, len(train_loader))
        else:
            optimizer, scheduler, interval = default_optimizer(params, self.cfg, len(train_loader))
        if interval not in ("epoch", "step"):
            raise ConfigError(f"configure_optimizer of {type(head).__name__} returned interval '{interval}'"
                              " (expected 'epoch' or 'step')")
        ema = ModelEMA(head, self.cfg["ema_decay"]) if self.cfg.get("use_ema", False) else None
        scaler = self._grad_scaler()
        tracker = {"best_metric": None, "best_epoch": -1, "epochs_without_improvement": 0}
        start_epoch, resumed_from = 0, None
        if resume and self.last_path.is_file():
            ckpt = load_checkpoint(self.last_path)
            load_module_state(head, ckpt["model"], self.last_path)
            if ema is not None:
                if not ckpt.get("ema"):
                    raise ConfigError(f"{self.last_path} was written without EMA but train.use_ema is true; "
                                      "re-train without --resume")
                ema.load_state_dict(ckpt["ema"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if scheduler is not None and ckpt.get("scheduler") is not None:
                scheduler.load_state_dict(ckpt["scheduler"])
            if scaler is not None and ckpt.get("scaler") is not None:
                scaler.load_state_dict(ckpt["scaler"])
            tracker = {key: ckpt[key] for key in tracker}
            restore_rng_state(ckpt["rng"], train_loader)
            start_epoch = resumed_from = ckpt["epoch"] + 1
            self._truncate_log(keep_through_epoch=ckpt["epoch"])
            notes.append(f"resumed from {self.last_path.name} after epoch {ckpt['epoch']}")
            if ckpt.get("finished"):
                return self._result(selection, tracker, ckpt["epoch"] + 1, ckpt.get("stopped_early", False),
                                    resumed_from, notes)
        else:
            if resume:
                notes.append(f"resume requested but {self.last_path.name} does not exist: trained from scratch")
            self._truncate_log(keep_through_epoch=-1)
        stopped_early, epoch = False, start_epoch - 1
        patience = int(self.cfg.get("early_stopping_patience", 0))
        bar = progress(range(start_epoch, epochs), self._desc("train"), total=epochs - start_epoch, unit="epoch")
        for epoch in bar:
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            set_epoch(train_loader, epoch)
            terms = self._train_epoch(head, train_loader, optimizer, scheduler if interval == "step" else None,
                                      ema, scaler, epoch)
            if scheduler is not None and interval == "epoch":
                scheduler.step()
            eval_model = ema.module if ema is not None else head
            val = self._validate(eval_model, val_loader, selection)
            metric = val[selection] if selection.startswith("val_") else terms["loss"]
            improved = self._improves(metric, tracker["best_metric"], selection)
            if improved:
                tracker.update(best_metric=metric, best_epoch=epoch, epochs_without_improvement=0)
            else:
                tracker["epochs_without_improvement"] += 1
            stopped_early = patience > 0 and tracker["epochs_without_improvement"] >= patience
            finished = stopped_early or epoch == epochs - 1
            self._append_log({"epoch": epoch, "lr": lr, **terms, **val, "selected": improved,
                              "time_s": round(time.perf_counter() - started, 4)})
            state = self._state(head, ema, optimizer, scheduler, scaler, epoch, tracker, selection,
                                train_loader, finished, stopped_early)
            if improved:  # what scoring reads: the weights (and EMA) with their epoch's record, no resume state
                save_checkpoint(self.best_path, {k: v for k, v in state.items() if k not in RESUME_ONLY_KEYS})
            save_checkpoint(self.last_path, state)
            bar.set_postfix(loss=f"{terms['loss']:.4f}", **{selection: f"{metric:.4f}"})
            if stopped_early:
                notes.append(f"early stopping after epoch {epoch} (patience {patience})")
                break
        return self._result(selection, tracker, epoch + 1, stopped_early, resumed_from, notes)

    # ------------------------------------------------------------------------------------- pieces
    def _train_epoch(self, head, loader, optimizer, step_scheduler, ema, scaler, epoch) -> dict:
        head.train()
        sums: dict[str, float] = {}
        batches = 0
        clip = float(self.cfg.get("gradient_clip", 0.0) or 0.0)
        for batch in progress(loader, self._desc(f"epoch {epoch}"), unit="batch", nested=True):
            batch = move_to_device(batch, self.device)
            with autocast_context(self.device, self.cfg):
                losses = head.training_losses(batch)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"{self.run_dir}: {self.prefix}loss is {loss.item()} in epoch {epoch}; lower train.lr or "
                    "set train.gradient_clip")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_([p for p in head.parameters() if p.requires_grad], clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if step_scheduler is not None:
                step_scheduler.step()
            if ema is not None:
                ema.update(head)
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
            batches += 1
        if batches == 0:
            raise ConfigError(f"{self.run_dir}: the training loader yielded no batch (empty training split?)")
        return {key: value / batches for key, value in sums.items()}

    def _validate(self, model, loader, selection: str) -> dict:
        if loader is None:
            return {}
        if selection == "val_loss":
            return {"val_loss": self._mean_loss(model, loader)}
        from weldfilm.metrics import image_auroc

        out = score_loader(model, loader, self.device, self.cfg, desc=self._desc("validate"))
        if out["label"] is None or len(np.unique(out["label"])) < 2:
            raise ConfigError(f"{self.run_dir}: the validation split needs good and defective samples for "
                              "I-AUROC selection; it has only one class (use select_on='loss' or another split)")
        return {"val_auroc": image_auroc(out["label"], out["score"])}

    @torch.no_grad()
    def _mean_loss(self, model, loader) -> float:
        model.eval()
        total, batches = 0.0, 0
        for batch in progress(loader, self._desc("validate loss"), unit="batch", nested=True):
            with autocast_context(self.device, self.cfg):
                total += float(model.training_losses(move_to_device(batch, self.device))["loss"])
            batches += 1
        return total / max(batches, 1)

    @staticmethod
    def _improves(metric: float, best: float | None, selection: str) -> bool:
        if best is None:
            return True
        return metric > best if selection.endswith("auroc") else metric < best

    def _state(self, head, ema, optimizer, scheduler, scaler, epoch, tracker, selection, loader,
               finished, stopped_early) -> dict:
        return {
            "model": head.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epoch,
            **tracker,
            "selection": selection,
            "rng": capture_rng_state(loader),
            "finished": finished,
            "stopped_early": stopped_early,
        }

    def _grad_scaler(self):
        if self.device.type == "cuda" and self.cfg.get("mixed_precision") and self.cfg.get("amp_dtype", "fp16") == "fp16":
            return torch.amp.GradScaler("cuda")
        return None

    def _amp_notes(self) -> list[str]:
        if self.cfg.get("mixed_precision") and self.device.type != "cuda":
            return [f"train.mixed_precision is on but the device is {self.device.type}: trained in fp32 (AMP is CUDA only)"]
        return []

    # ---------------------------------------------------------------------------------------- log
    def _desc(self, what: str) -> str:
        """Progress label: what, the run folder's path below its method (``fair/causal_film/seed0``), sub-model."""
        parts = self.run_dir.parts[-3:]
        return " ".join(x for x in (what, "/".join(parts), self._tag()) if x)

    def _tag(self) -> str | None:
        return self.prefix.rstrip("_") or None

    def _append_log(self, entry: dict) -> None:
        row = {"epoch": entry.pop("epoch")}
        if self._tag():
            row["submodel"] = self._tag()
        row.update({f"{self.prefix}{key}": value for key, value in entry.items()})
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as handle:
            handle.write(json.dumps(row, sort_keys=True) + "\n")

    def _read_log(self) -> list[dict]:
        if not self.log_path.is_file():
            return []
        rows = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut by a kill is dropped
                rows.append(json.loads(line))
        return rows

    def _truncate_log(self, keep_through_epoch: int) -> None:
        """Drop this sub-model's lines after ``keep_through_epoch`` (all of them for a fresh fit)."""
        if not self.log_path.is_file():
            return
        rows = [row for row in self._read_log()
                if row.get("submodel") != self._tag() or row["epoch"] <= keep_through_epoch]
        write_text(self.log_path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))

    def _result(self, selection, tracker, epochs_run, stopped_early, resumed_from, notes) -> FitResult:
        history = [row for row in self._read_log() if row.get("submodel") == self._tag()]
        best = tracker["best_metric"]
        return FitResult(selection=selection, best_epoch=tracker["best_epoch"],
                         best_metric=float(best) if best is not None else math.nan, epochs_run=epochs_run,
                         stopped_early=stopped_early, resumed_from_epoch=resumed_from,
                         best_checkpoint=str(self.best_path), last_checkpoint=str(self.last_path),
                         notes=notes, history=history)
