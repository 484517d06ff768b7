"""One frozen-backbone pass per batch: the Causal-FiLM runs of a seed that read the same TRAIN stream train
in lockstep (weldfilm.runner.train_group) with exactly the weights and scores of training them one by one,
resume per run after a kill, and the workflow has one train job per (method, seed)."""

from __future__ import annotations

import copy
import json
import re

import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY_PREPROCESS, TINY_SYNTHETIC
from training_helpers import BACKBONE_DIRS, shared_inputs

from weldfilm.methods.causal_film.method import CausalFiLMMethod
from weldfilm.config import DEFAULT_CONFIG, deep_merge, prepare
from weldfilm.models.backbones import FrozenBackbones
from weldfilm.run_keys import train_stream_key
from weldfilm.runner import train_group
from weldfilm.training.trainer import Trainer

MEMBERS = [{"method": "causal_film", "seed": 0, "protocol": "fair", "ablation": None},
           {"method": "causal_film", "seed": 0, "protocol": "fair", "ablation": "no_film"},
           {"method": "causal_film", "seed": 0, "protocol": "fair", "ablation": "topk_1.0"}]
SPLITS = ["val", "test"]


def group_config(base, data_root, tmp_path_factory, **train) -> dict:
    """The tiny config (tests/conftest.py) with its manifest and backbones in place, results below ``base``."""
    shared = shared_inputs(tmp_path_factory.getbasetemp() / "weldfilm_shared", data_root, TINY_PREPROCESS)
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw.pop("profile", None)
    (base / "data").mkdir(parents=True, exist_ok=True)
    (base / "data" / "manifest.csv").write_bytes((shared / "manifest.csv").read_bytes())
    return prepare(deep_merge(raw, {
        "results": str(base), "seeds": [0], "data": {"source": "synthetic", "root": str(data_root)},
        "synthetic": copy.deepcopy(TINY_SYNTHETIC), "preprocess": copy.deepcopy(TINY_PREPROCESS),
        "backbones": {"source": "tiny", **{k: str(shared / "backbones" / v) for k, v in BACKBONE_DIRS.items()}},
        "causal_film": {"d_model": 16, "sensor_hidden_dim": 8},
        "train": {"epochs": 3, "batch_size": 4, "warmup_epochs": 0, "device": "cpu", "use_augmentations": True,
                  "early_stopping_patience": 0, **train}}))


pytestmark = pytest.mark.slow  # each test trains or runs the workflow (~20 s)

def run_dirs(base, members=MEMBERS):
    return [base / "runs" / (m["ablation"] or m["protocol"]) for m in members]


@pytest.fixture
def count_extract(monkeypatch):
    """How many times the frozen backbones ran (``FrozenBackbones.extract`` calls)."""
    calls = []
    original = FrozenBackbones.extract

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FrozenBackbones, "extract", counting)
    return calls


def trained(run_dir) -> dict:
    """What a run left: best.pt weights, its scores and its epochs."""
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    return {"model": best["model"], "ema": best["ema"], "epoch": best["epoch"],
            "scores": {s: pd.read_csv(run_dir / "eval" / s / "scores.csv") for s in SPLITS},
            "log": [line.split('"time_s"')[0] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]}


def assert_same_runs(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"] and a["log"] == b["log"]
    for key in ("model",):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), name
    assert (a["ema"] is None) == (b["ema"] is None)
    if a["ema"] is not None:
        for name, value in a["ema"]["module"].items():
            assert torch.equal(value, b["ema"]["module"][name]), name
    for split in SPLITS:
        pd.testing.assert_frame_equal(a["scores"][split], b["scores"][split], check_exact=True)


@pytest.fixture(scope="module")
def one_by_one(tmp_path_factory, tiny_data_root):
    """The three runs trained separately (each its own train_group of one run): the reference."""
    base = tmp_path_factory.mktemp("one_by_one")
    cfg = group_config(base, tiny_data_root, tmp_path_factory)
    for member, run_dir in zip(MEMBERS, run_dirs(base)):
        train_group(cfg, [member], [run_dir], eval_splits=SPLITS)
    return {str(m["ablation"]): trained(d) for m, d in zip(MEMBERS, run_dirs(base))}


def test_runs_on_one_augmented_stream_train_together_exactly_as_one_by_one(one_by_one, tmp_path, tmp_path_factory,
                                                                          tiny_data_root, count_extract):
    cfg = group_config(tmp_path, tiny_data_root, tmp_path_factory)
    from weldfilm.config import run_config

    keys = {train_stream_key(run_config(cfg, **m)) for m in MEMBERS}
    assert len(keys) == 1 and None not in keys  # augmented: one live stream for the three
    warm = CausalFiLMMethod(run_config(cfg, **MEMBERS[0]), tmp_path / "warm", "cpu")
    for split in SPLITS:  # the VAL and TEST feature caches the runs read, built before counting
        warm.split_data(split)
    count_extract.clear()
    metadata = train_group(cfg, MEMBERS, run_dirs(tmp_path), eval_splits=SPLITS)
    for member, run_dir, meta in zip(MEMBERS, run_dirs(tmp_path), metadata):
        assert_same_runs(trained(run_dir), one_by_one[str(member["ablation"])])
        assert meta["lockstep"]["runs"] == [str(d) for d in run_dirs(tmp_path)]
        assert meta["describe"]["feature_source"]["train"] == "backbones on the fly (augmented)"
    # the backbones ran once per TRAIN batch (VAL and TEST come from the feature cache)
    epochs, batches = cfg["train"]["epochs"], metadata[0]["fit"]["train_samples"]
    assert len(count_extract) == epochs * -(-batches // cfg["train"]["batch_size"])

    # every run finished: a re-run job trains nothing again, only re-writes metadata and re-scores, also
    # when a scoring setting changed (the reason Snakemake re-runs it; weldfilm.run_keys.SCORING_ONLY)
    count_extract.clear()
    before = [(d / "checkpoints" / "last.pt").stat().st_mtime_ns for d in run_dirs(tmp_path)]
    rescored = {**cfg, "evaluation": {**cfg["evaluation"], "bootstrap": 50}}
    train_group(rescored, MEMBERS, run_dirs(tmp_path), eval_splits=SPLITS)
    assert count_extract == [] and before == [(d / "checkpoints" / "last.pt").stat().st_mtime_ns
                                              for d in run_dirs(tmp_path)]
    for member, run_dir in zip(MEMBERS, run_dirs(tmp_path)):
        assert_same_runs(trained(run_dir), one_by_one[str(member["ablation"])])
        assert json.loads((run_dir / "eval" / "test" / "metrics.json").read_text())["bootstrap"]["resamples"] == 50


def test_killed_group_resumes_each_run_from_its_own_epoch(one_by_one, tmp_path, tmp_path_factory, tiny_data_root,
                                                          monkeypatch):
    cfg = group_config(tmp_path, tiny_data_root, tmp_path_factory)
    original = Trainer._end_epoch
    calls = []

    def killed_at_fifth(self, member, epoch, loader):  # epoch 0 of all three, epoch 1 of the first: then the kill
        calls.append(epoch)
        if len(calls) == 5:
            raise KeyboardInterrupt("simulated kill")
        return original(self, member, epoch, loader)

    monkeypatch.setattr(Trainer, "_end_epoch", killed_at_fifth)
    with pytest.raises(KeyboardInterrupt):
        train_group(cfg, MEMBERS, run_dirs(tmp_path), eval_splits=SPLITS)
    monkeypatch.setattr(Trainer, "_end_epoch", original)
    epochs_done = [torch.load(d / "checkpoints" / "last.pt", weights_only=True)["epoch"] for d in run_dirs(tmp_path)]
    assert epochs_done == [1, 0, 0] and not any((d / "metadata.json").exists() for d in run_dirs(tmp_path))

    metadata = train_group(cfg, MEMBERS, run_dirs(tmp_path), eval_splits=SPLITS)
    assert [m["fit"]["resumed_from_epoch"] for m in metadata] == [2, 1, 1]
    for member, run_dir in zip(MEMBERS, run_dirs(tmp_path)):
        assert_same_runs(trained(run_dir), one_by_one[str(member["ablation"])])


def test_runs_on_one_cached_stream_train_together_exactly_as_one_by_one(tmp_path, tmp_path_factory, tiny_data_root):
    """Without augmentation TRAIN comes from the feature cache: fair and an ablation share that stream."""
    from weldfilm.config import run_config

    members = MEMBERS[:2]
    cfg = group_config(tmp_path, tiny_data_root, tmp_path_factory, use_augmentations=False, epochs=2)
    assert len({train_stream_key(run_config(cfg, **m)) for m in members}) == 1
    alone = run_dirs(tmp_path / "alone", members)
    for member, run_dir in zip(members, alone):
        train_group(cfg, [member], [run_dir], eval_splits=SPLITS)
    metadata = train_group(cfg, members, run_dirs(tmp_path / "together", members), eval_splits=SPLITS)
    assert metadata[0]["lockstep"] is not None and metadata[0]["describe"]["feature_source"]["train"].startswith("cache")
    for run_dir, reference in zip(run_dirs(tmp_path / "together", members), alone):
        assert_same_runs(trained(run_dir), trained(reference))


# --------------------------------------------------------------------------------- the workflow
def fake_results(workdir) -> None:
    """Every output of the default workflow as an empty file (folders for the tiny backbones and the data),
    all with one modification time, recorded as made by this config (params included) by `snakemake --touch`
    run before they exist: the state after a complete run, without running a job."""
    import os

    from test_workflow import run_snakemake

    planned = run_snakemake(workdir, "-n")
    assert planned.returncode == 0, planned.stdout[-3000:]
    touched = run_snakemake(workdir, "--touch", "--cores", "1")
    assert touched.returncode == 0, touched.stdout[-3000:]
    for line in planned.stdout.splitlines():
        match = re.match(r"\s*output: (.*)", line)
        for path in (match.group(1).split(", ") if match else []):
            target = workdir / path
            if "backbones/tiny/" in path or path.endswith("synthetic"):
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
            os.utime(target, (1_700_000_000, 1_700_000_000))


def test_one_train_job_per_method_and_seed_and_an_ablation_change_reruns_causal_film_only(tmp_path):
    """One job per method and seed, or per method for workflow.seeds_together (the default's baselines)."""
    from test_workflow import job_counts, make_workdir, run_snakemake

    from weldfilm.config import prepare

    workdir = make_workdir(tmp_path)
    cfg = prepare(yaml.safe_load((workdir / "config.yaml").read_text()))
    together = cfg["workflow"]["seeds_together"]
    assert together and "causal_film" not in together
    planned = run_snakemake(workdir, "-n", "--quiet", "rules")
    counts = job_counts(planned.stdout)
    assert {rule: n for rule, n in counts.items() if rule.startswith("train")} == \
        {f"train_{method}": 1 if method in together else len(cfg["seeds"]) for method in cfg["methods"]}
    fake_results(workdir)
    triggers = ("--rerun-triggers", "mtime", "params")  # (--touch records no code for script rules)
    assert "Nothing to be done" in run_snakemake(workdir, "-n", *triggers).stdout

    make_workdir(tmp_path, merge={"ablations": {"no_film": {"loss.lambda_l1": 0.5}}})  # one ablation's setting
    rerun = run_snakemake(workdir, "-n", "--quiet", "rules", *triggers)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert job_counts(rerun.stdout) == {"train_causal_film": len(cfg["seeds"]), "tables": 1, "figures": 1, "paper": 1,
                                        "all": 1}
    assert "params have changed since last execution:\n        train_causal_film\n" in rerun.stdout
