"""The one training loop of the project: any head with ``training_losses`` / ``anomaly_scores``.

Causal-FiLM and every gradient-trained baseline are fitted here: optimiser (the head's own via
``configure_optimizer`` or AdamW + warmup/cosine), EMA, AMP (CUDA only), gradient clipping, selection
on the validation loader's I-AUROC (or a loss), early stopping, ``best.pt`` / ``last.pt``, exact
resume from ``last.pt`` and the JSON-lines log ``train_log.jsonl``.

``fit_members`` trains several heads ("members", e.g. the protocols and ablations of one Causal-FiLM
seed) in lockstep from one loader: each batch (one frozen-backbone pass) is made once and given to
every member, each member exactly as its own ``Trainer.fit``; ``Trainer.fit`` is its one-member case.
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
from weldfilm.training.seeding import capture_rng_state, restore_loader_state, restore_rng_state, seed_everything

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


@dataclass
class Member:
    """One head of a (possibly lockstep) fit: everything ``Trainer.fit`` keeps for its head.

    Made by :meth:`Trainer.member`; :func:`fit_members` trains members from one loader. ``rng`` is the
    member's own global RNG state (torch CPU/CUDA, numpy, python), swapped in around each of its steps
    and its validation, so members trained together draw exactly what they would draw alone.
    """

    trainer: "Trainer"
    head: nn.Module
    val_loader: object
    selection: str
    optimizer: object
    scheduler: object
    interval: str
    ema: object
    scaler: object
    tracker: dict
    notes: list
    epochs: int
    patience: int
    next_epoch: int = 0
    resumed_from: int | None = None
    loader_state: list | None = None      # the loader's generator states of last.pt (after epoch next_epoch - 1)
    rng: dict | None = None
    finished: bool = False
    stopped_early: bool = False
    sums: dict = field(default_factory=dict)
    batches: int = 0
    epoch_started: float = 0.0
    epoch_lr: float = 0.0
    last_loss: float = math.nan

    def result(self) -> FitResult:
        return self.trainer._result(self.selection, self.tracker, self.next_epoch, self.stopped_early,
                                    self.resumed_from, self.notes)


@contextlib.contextmanager
def member_rng(member: Member):
    """Run a member's step or validation with its own global RNG state (restored before, kept after)."""
    restore_rng_state(member.rng)
    try:
        yield
    finally:
        member.rng = capture_rng_state()


def fit_members(members: list[Member], train_loader) -> list[FitResult]:
    """Train every member on the batches of one ``train_loader``, each batch produced once.

    Each member keeps its own head, optimiser, schedule, EMA, scaler, early stopping, checkpoints and
    log, exactly as ``Trainer.fit`` alone (on CPU bit for bit: each member's RNG is its own, the loader
    draws from its own generators). Members resumed at different epochs: each epoch runs the members
    whose next epoch it is; the loader's generators are set from a runner's ``last.pt`` whenever they
    are not at that epoch (the earliest member's at the start). Finished (or early-stopped) members
    leave; the loop ends when none is left. Members must not change the batches they are given.
    """
    active = [m for m in members if not m.finished]
    loader_epoch = 0  # the epoch the loader's generators are at (a fresh loader: 0)
    lead = members[0].trainer if members else None
    desc = lead._desc("train") + (f" +{len(members) - 1} runs in lockstep" if len(members) > 1 else "") if lead else ""

    def epochs():
        nonlocal active
        while active:
            yield min(m.next_epoch for m in active)
            active = [m for m in active if not m.finished]

    total = max((m.epochs - m.next_epoch for m in active), default=0)
    bar = progress(epochs(), desc, total=total, unit="epoch")
    for epoch in bar:
        runners = [m for m in active if m.next_epoch == epoch]
        if loader_epoch != epoch:
            restore_loader_state(runners[0].loader_state, train_loader, runners[0].trainer.last_path)
        set_epoch(train_loader, epoch)
        for m in runners:
            m.trainer._begin_epoch(m)
        for batch in progress(train_loader, lead._desc(f"epoch {epoch}"), unit="batch", nested=True):
            for m in runners:
                with member_rng(m):
                    m.trainer._train_step(m, batch, epoch)
        loader_epoch = epoch + 1
        for m in runners:
            with member_rng(m):
                metric = m.trainer._end_epoch(m, epoch, train_loader)
        if len(members) == 1:
            bar.set_postfix(loss=f"{runners[0].last_loss:.4f}", **{runners[0].selection: f"{metric:.4f}"})
        else:
            bar.set_postfix(training=len([m for m in runners if not m.finished]))
    return [m.result() for m in members]


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
        """Train ``head`` for ``train_cfg['epochs']`` epochs (or until early stopping); see the module doc.

        The one-member case of :func:`fit_members` (several heads on one loader)."""
        (result,) = fit_members([self.member(head, train_loader, val_loader, resume, select_on)], train_loader)
        return result

    def member(self, head: nn.Module, train_loader, val_loader=None, resume: bool = False,
               select_on: str = "auroc") -> Member:
        """Everything a fit of ``head`` needs before its first epoch (optimiser, EMA, resumed state)."""
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
        member = Member(trainer=self, head=head, val_loader=val_loader, selection=selection, optimizer=optimizer,
                        scheduler=scheduler, interval=interval, ema=ema, scaler=self._grad_scaler(),
                        tracker={"best_metric": None, "best_epoch": -1, "epochs_without_improvement": 0},
                        notes=notes, epochs=epochs, patience=int(self.cfg.get("early_stopping_patience", 0)))
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
            if member.scaler is not None and ckpt.get("scaler") is not None:
                member.scaler.load_state_dict(ckpt["scaler"])
            member.tracker = {key: ckpt[key] for key in member.tracker}
            restore_rng_state(ckpt["rng"])
            member.loader_state = ckpt["rng"].get("loader", [])
            member.next_epoch = member.resumed_from = ckpt["epoch"] + 1
            self._truncate_log(keep_through_epoch=ckpt["epoch"])
            notes.append(f"resumed from {self.last_path.name} after epoch {ckpt['epoch']}")
            if ckpt.get("finished"):
                member.finished, member.stopped_early = True, ckpt.get("stopped_early", False)
        else:
            if resume:
                notes.append(f"resume requested but {self.last_path.name} does not exist: trained from scratch")
            self._truncate_log(keep_through_epoch=-1)
        if member.next_epoch >= epochs:
            member.finished = True
        member.rng = capture_rng_state()
        return member

    # ------------------------------------------------------------------------------------- pieces
    def _begin_epoch(self, m: Member) -> None:
        m.epoch_started = time.perf_counter()
        m.epoch_lr = m.optimizer.param_groups[0]["lr"]
        m.head.train()
        m.sums, m.batches = {}, 0

    def _train_step(self, m: Member, batch, epoch: int) -> None:
        """One optimisation step of member ``m`` on ``batch`` (shared with other members: not changed)."""
        batch = move_to_device(batch, self.device)
        with autocast_context(self.device, self.cfg):
            losses = m.head.training_losses(batch)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"{self.run_dir}: {self.prefix}loss is {loss.item()} in epoch {epoch}; lower train.lr or "
                "set train.gradient_clip")
        optimizer, scaler = m.optimizer, m.scaler
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        clip = float(self.cfg.get("gradient_clip", 0.0) or 0.0)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in m.head.parameters() if p.requires_grad], clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if m.scheduler is not None and m.interval == "step":
            m.scheduler.step()
        if m.ema is not None:
            m.ema.update(m.head)
        for key, value in losses.items():
            m.sums[key] = m.sums.get(key, 0.0) + float(value.detach())
        m.batches += 1

    def _end_epoch(self, m: Member, epoch: int, train_loader) -> float:
        """Epoch schedule, validation, selection, early stopping, log line, checkpoints; the selection metric."""
        if m.batches == 0:
            raise ConfigError(f"{self.run_dir}: the training loader yielded no batch (empty training split?)")
        terms = {key: value / m.batches for key, value in m.sums.items()}
        if m.scheduler is not None and m.interval == "epoch":
            m.scheduler.step()
        eval_model = m.ema.module if m.ema is not None else m.head
        val = self._validate(eval_model, m.val_loader, m.selection)
        metric = val[m.selection] if m.selection.startswith("val_") else terms["loss"]
        tracker = m.tracker
        improved = self._improves(metric, tracker["best_metric"], m.selection)
        if improved:
            tracker.update(best_metric=metric, best_epoch=epoch, epochs_without_improvement=0)
        else:
            tracker["epochs_without_improvement"] += 1
        m.stopped_early = m.patience > 0 and tracker["epochs_without_improvement"] >= m.patience
        m.finished = m.stopped_early or epoch == m.epochs - 1
        self._append_log({"epoch": epoch, "lr": m.epoch_lr, **terms, **val, "selected": improved,
                          "time_s": round(time.perf_counter() - m.epoch_started, 4)})
        state = self._state(m.head, m.ema, m.optimizer, m.scheduler, m.scaler, epoch, tracker, m.selection,
                            train_loader, m.finished, m.stopped_early)
        if improved:  # what scoring reads: the weights (and EMA) with their epoch's record, no resume state
            save_checkpoint(self.best_path, {k: v for k, v in state.items() if k not in RESUME_ONLY_KEYS})
        save_checkpoint(self.last_path, state)
        m.next_epoch = epoch + 1
        m.last_loss = terms["loss"]
        if m.stopped_early:
            m.notes.append(f"early stopping after epoch {epoch} (patience {m.patience})")
        return metric

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
