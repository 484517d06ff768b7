"""The shared Trainer on a dummy head: schedules, EMA, selection, logs, resume after a kill, corrupt files."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from weldfilm.errors import CheckpointError
from weldfilm.training.loaders import make_loader
from weldfilm.training import (ModelEMA, Trainer, load_checkpoint, load_selected_weights, warmup_cosine_scheduler,
                               warmup_cosine_value)

TRAIN_CFG = {"epochs": 4, "batch_size": 8, "lr": 1e-2, "weight_decay": 1e-2, "min_lr": 1e-5, "warmup_epochs": 1,
             "warmup_start_lr": 1e-4, "use_ema": True, "ema_decay": 0.9, "early_stopping_patience": 0,
             "gradient_clip": 1.0}


class VectorDataset(torch.utils.data.Dataset):
    """Normal samples lie in a 2-D subspace of R^6; defects leave it."""

    def __init__(self, n_good: int, n_bad: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        basis = torch.randn(2, 6, generator=torch.Generator().manual_seed(99))
        good = torch.randn(n_good, 2, generator=g) @ basis
        bad = torch.randn(n_bad, 2, generator=g) @ basis + 2.0 * torch.randn(n_bad, 6, generator=g)
        self.x = torch.cat([good, bad])
        self.y = torch.cat([torch.zeros(n_good), torch.ones(n_bad)]).long()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "label": self.y[i], "sample_id": f"s{i}"}


def collate(items):
    return {"x": torch.stack([i["x"] for i in items]), "label": torch.stack([i["label"] for i in items]),
            "sample_id": [i["sample_id"] for i in items]}


class DummyHead(nn.Module):
    """Autoencoder with dropout (so the RNG matters); score = reconstruction error."""

    def __init__(self, fail_at_step: int | None = None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 2), nn.Dropout(0.2), nn.Linear(2, 6))
        self.fail_at_step, self.steps = fail_at_step, 0

    def training_losses(self, batch):
        self.steps += 1
        if self.fail_at_step is not None and self.steps == self.fail_at_step:
            raise KeyboardInterrupt("simulated kill")
        err = ((self.net(batch["x"]) - batch["x"]) ** 2).mean(dim=1)
        return {"loss": err.mean(), "max_err": err.max()}

    def anomaly_scores(self, batch):
        return ((self.net(batch["x"]) - batch["x"]) ** 2).mean(dim=1)


def loaders(seed=0):
    train = make_loader(VectorDataset(32, 0, seed=1), 8, shuffle=True, seed=seed, collate_fn=collate)
    val = make_loader(VectorDataset(10, 10, seed=2), 16, shuffle=False, collate_fn=collate)
    return train, val


def fit(tmp_path, cfg=TRAIN_CFG, head_cls=None, resume=False, fail_at_step=None, **kwargs):
    torch.manual_seed(0)  # the same initial weights in every call
    head = (head_cls or DummyHead)(fail_at_step=fail_at_step)
    train, val = loaders()
    result = Trainer(tmp_path, cfg, "cpu", seed=3, **kwargs).fit(head, train, val, resume=resume)
    return head, result


def test_warmup_cosine_values():
    assert warmup_cosine_value(0, 10, 1.0, 0.0, warmup_steps=2, warmup_start_lr=0.1) == pytest.approx(0.1)
    assert warmup_cosine_value(1, 10, 1.0, 0.0, warmup_steps=2, warmup_start_lr=0.1) == pytest.approx(0.55)
    assert warmup_cosine_value(2, 10, 1.0, 0.0, warmup_steps=2, warmup_start_lr=0.1) == pytest.approx(1.0)
    assert warmup_cosine_value(6, 10, 1.0, 0.0, warmup_steps=2) == pytest.approx(0.5)  # half-way through cosine
    # without warmup: exactly torch's CosineAnnealingLR (the authors' schedule)
    p1, p2 = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    ours_opt, ref_opt = torch.optim.SGD([p1], lr=0.3), torch.optim.SGD([p2], lr=0.3)
    ours = warmup_cosine_scheduler(ours_opt, total_steps=7, min_lr=1e-3)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=7, eta_min=1e-3)
    for _ in range(7):
        assert ours_opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-9)
        ours_opt.step(), ref_opt.step(), ours.step(), ref.step()


def test_ema_update_formula():
    model = nn.Linear(2, 1)
    ema = ModelEMA(model, decay=0.9)
    before = ema.module.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, 0.9 * before + 0.1 * model.weight)
    assert not ema.module.weight.requires_grad


def test_fit_logs_selects_and_uses_ema(tmp_path):
    head, result = fit(tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert {"lr", "loss", "max_err", "val_auroc", "time_s", "selected"} <= set(rows[0])
    assert rows[0]["lr"] == pytest.approx(1e-4) and rows[1]["lr"] == pytest.approx(1e-2)  # warmup then lr
    assert result.selection == "val_auroc"
    best = max(range(4), key=lambda e: (rows[e]["val_auroc"], -e))
    assert result.best_epoch == best and result.best_metric == pytest.approx(rows[best]["val_auroc"])
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert ckpt["epoch"] == best and ckpt["ema"] is not None
    assert "optimizer" not in ckpt and "optimizer" in load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    # scoring weights are the EMA ones, not the raw model's
    fresh = DummyHead()
    load_selected_weights(fresh, tmp_path / "checkpoints" / "best.pt")
    assert torch.equal(fresh.net[0].weight, ckpt["ema"]["module"]["net.0.weight"])
    assert not torch.equal(ckpt["ema"]["module"]["net.0.weight"], ckpt["model"]["net.0.weight"])


def test_fit_is_repeatable(tmp_path):
    a, _ = fit(tmp_path / "a")
    b, _ = fit(tmp_path / "b")
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    full, full_result = fit(tmp_path / "full")
    steps_per_epoch = 4
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "killed", fail_at_step=2 * steps_per_epoch + 2)  # inside epoch 2
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["epoch"] == 1
    resumed, result = fit(tmp_path / "killed", resume=True)
    assert result.resumed_from_epoch == 2
    for pa, pb in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(pa, pb)
    killed_log = [json.loads(x) for x in (tmp_path / "killed" / "train_log.jsonl").read_text().splitlines()]
    full_log = [json.loads(x) for x in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in killed_log] == [0, 1, 2, 3]
    assert [r["loss"] for r in killed_log] == [r["loss"] for r in full_log]
    assert result.best_epoch == full_result.best_epoch
    # resuming a finished run trains nothing more
    again, again_result = fit(tmp_path / "killed", resume=True)
    assert again_result.epochs_run == 4 and len((tmp_path / "killed" / "train_log.jsonl").read_text().splitlines()) == 4


def test_corrupt_checkpoint_raises_checkpoint_error(tmp_path):
    fit(tmp_path, cfg={**TRAIN_CFG, "epochs": 1})
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="last.pt"):
        fit(tmp_path, resume=True)
    (tmp_path / "checkpoints" / "best.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="best.pt"):
        load_selected_weights(DummyHead(), tmp_path / "checkpoints" / "best.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "checkpoints" / "missing.pt")


def test_checkpoint_of_another_model_raises(tmp_path):
    fit(tmp_path, cfg={**TRAIN_CFG, "epochs": 1})
    other = nn.Sequential(nn.Linear(6, 3))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_selected_weights(other, tmp_path / "checkpoints" / "best.pt")


def test_early_stopping_and_train_loss_selection(tmp_path):
    class ConstantScores(DummyHead):
        def anomaly_scores(self, batch):
            return torch.zeros(len(batch["x"]))

    _, result = fit(tmp_path / "es", cfg={**TRAIN_CFG, "epochs": 10, "early_stopping_patience": 2},
                    head_cls=ConstantScores)
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 0
    torch.manual_seed(0)
    train, _ = loaders()
    res = Trainer(tmp_path / "tl", {**TRAIN_CFG, "use_ema": False}, "cpu", 0).fit(DummyHead(), train, None)
    rows = [json.loads(x) for x in (tmp_path / "tl" / "train_log.jsonl").read_text().splitlines()]
    assert res.selection == "train_loss"
    assert res.best_metric == pytest.approx(min(r["loss"] for r in rows))


def test_prefix_and_own_optimizer(tmp_path):
    class StepScheduled(DummyHead):
        def configure_optimizer(self, train_cfg, steps_per_epoch):
            opt = torch.optim.Adam(self.parameters(), lr=0.01)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=train_cfg["epochs"] * steps_per_epoch,
                                                        pct_start=0.1, anneal_strategy="cos")
            return opt, sched, "step"

    torch.manual_seed(0)
    train, val = loaders()
    cfg = {**TRAIN_CFG, "use_ema": False}
    Trainer(tmp_path, cfg, "cpu", 0, prefix="audio_").fit(StepScheduled(), train, val)
    Trainer(tmp_path, cfg, "cpu", 0, prefix="video_").fit(DummyHead(), train, val, select_on="loss")
    rows = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    audio = [r for r in rows if r["submodel"] == "audio"]
    video = [r for r in rows if r["submodel"] == "video"]
    assert len(audio) == len(video) == 4
    assert "audio_loss" in audio[0] and "audio_val_auroc" in audio[0] and "video_val_loss" in video[0]
    assert audio[0]["audio_lr"] == pytest.approx(0.01 / 25)  # OneCycle's initial lr = max_lr / div_factor
    assert (tmp_path / "checkpoints" / "audio_best.pt").is_file() and (tmp_path / "checkpoints" / "video_last.pt").is_file()
    assert not math.isnan(load_checkpoint(tmp_path / "checkpoints" / "video_best.pt")["best_metric"])


def test_progress_in_a_log_file_is_plain_lines_with_rate_and_eta(monkeypatch):
    import io

    from weldfilm.training.progress import progress

    monkeypatch.setenv("WELDFILM_PROGRESS_INTERVAL", "0")
    log = io.StringIO()  # not a tty, as a job's redirected stderr
    bar = progress(range(4), "epochs", unit="epoch", stream=log)
    for _ in bar:
        bar.set_postfix(loss="0.5")
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("epochs:") and "0/4" in lines[0]
    assert "4/4" in lines[-1] and "epoch/s" in lines[-1] and "<00:00" in lines[-1] and "loss=0.5" in lines[-1]
    assert len(lines) == len(set(lines))  # the closing redraw is not written twice


def test_progress_in_a_log_file_waits_for_the_interval(monkeypatch):
    import io

    from weldfilm.training.progress import progress

    monkeypatch.setenv("WELDFILM_PROGRESS_INTERVAL", "3600")
    log = io.StringIO()
    for _ in progress(range(1000), "batches", stream=log):
        pass
    assert len(log.getvalue().splitlines()) == 2  # the start and the final totals only
    monkeypatch.setenv("WELDFILM_PROGRESS", "0")
    quiet = io.StringIO()
    assert list(progress(range(3), "off", stream=quiet)) == [0, 1, 2] and quiet.getvalue() == ""


def test_nested_progress_in_a_log_file_writes_only_when_the_loop_is_long(monkeypatch):
    import io
    import time

    from weldfilm.training.progress import progress

    monkeypatch.setenv("WELDFILM_PROGRESS_INTERVAL", "3600")
    short = io.StringIO()
    assert list(progress(range(5), "batches", stream=short, nested=True)) == list(range(5))
    assert short.getvalue() == ""
    monkeypatch.setenv("WELDFILM_PROGRESS_INTERVAL", "0.05")
    long = io.StringIO()
    for _ in progress(range(4), "batches", stream=long, nested=True):
        time.sleep(0.03)
    assert long.getvalue().splitlines()[-1].startswith("batches: 100% 4/4")
