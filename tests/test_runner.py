"""train_run + evaluate_run end to end on the tiny synthetic set, and the commands."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from training_helpers import ready_config, train_and_score_both_ways

from weldfilm.methods.causal_film.method import CausalFiLMMethod
from weldfilm.cli import main
from weldfilm.errors import CheckpointError, ConfigError
from weldfilm.evaluation import SCORE_COLUMNS, evaluate_run
from weldfilm.methods.base import REGISTRY, Method, get_method, normal_only_indices
from weldfilm.runner import train_run


@pytest.fixture
def cfg(tiny_config, tmp_path_factory, tiny_data_root):
    return ready_config(tiny_config, tmp_path_factory, tiny_data_root, epochs=2)


def test_registry_and_normal_only_heuristic():
    assert set(REGISTRY) == {"causal_film", "late_fusion", "m3dm", "dinomaly"}
    assert get_method("causal_film") is CausalFiLMMethod and issubclass(CausalFiLMMethod, Method)
    with pytest.raises(ConfigError, match="unknown method"):
        get_method("patchcore")
    assert normal_only_indices([0, 1, 1, 1], ["a/x-00", "good_weld/x-01", "b/NORMAL-03", "c/x-02"]) == [0, 1, 2]


@pytest.mark.slow
def test_train_then_evaluate_writes_valid_outputs(cfg, tmp_path):
    run_dir = tmp_path / "run"
    metadata, metrics = train_and_score_both_ways(cfg, run_dir)  # the fitted object scores as a rebuilt one
    on_disk = json.loads((run_dir / "metadata.json").read_text())
    assert on_disk["run"] == cfg["run"] and on_disk["selection_split"] == "val"
    assert {"run", "config", "describe", "token_shapes", "selection_split", "notes", "provenance", "fit"} <= set(on_disk)
    assert on_disk["describe"]["text_term"]["active"] is True
    assert on_disk["token_shapes"]["image_tokens"][1] == 2
    assert on_disk["precision"]["backbones"] == on_disk["precision"]["heads"] == "fp32"  # CPU: fp32, recorded
    assert on_disk["describe"]["precision"] == "backbones fp32, heads fp32, TF32 off (cpu)"
    assert metadata["fit"]["epochs_run"] == 2 and (run_dir / "checkpoints" / "best.pt").is_file()
    assert len((run_dir / "train_log.jsonl").read_text().splitlines()) == 2

    scores = pd.read_csv(run_dir / "eval" / "test" / "scores.csv")
    assert list(scores.columns) == SCORE_COLUMNS
    assert (scores["label"] == (scores["class_code"] != 0)).all() and scores["score"].notna().all()
    written = json.loads((run_dir / "eval" / "test" / "metrics.json").read_text())
    assert written["n"] == len(scores) == metrics["n"]
    assert {"split", "i_auroc", "i_auroc_ci95", "ap", "f1_max", "threshold", "per_defect_auroc", "p_aupro_proxy",
            "notes", "provenance"} <= set(written)
    assert written["threshold"]["source_split"] == "val" and 0.0 <= written["i_auroc"] <= 1.0


def test_failed_training_leaves_no_metadata(cfg, tmp_path, monkeypatch):
    def broken_fit(self, resume=False):
        raise ConfigError("boom")

    monkeypatch.setattr(CausalFiLMMethod, "fit", broken_fit)
    with pytest.raises(ConfigError):
        train_run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "metadata.json").exists()
    with pytest.raises(CheckpointError, match="metadata.json"):
        evaluate_run(tmp_path / "run", "test", tmp_path / "eval")


def test_evaluate_command_reports_missing_run(tmp_path, capsys):
    assert main(["evaluate", "--run", str(tmp_path / "nothing"), "--split", "test", "--out", str(tmp_path / "e")]) == 2
    assert "metadata.json" in capsys.readouterr().err
