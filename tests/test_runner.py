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
from weldfilm.methods import REGISTRY, get_method
from weldfilm.methods.base import Method, normal_only_indices
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



def test_one_method_list_and_one_factory(tmp_path, cfg):
    """The registry is the method list: the schema's enum, weldfilm.config.METHODS and the CLI agree with it;
    build_method builds every method with the same keywords; the fair guard runs for Causal-FiLM too."""
    import torch

    from weldfilm.config import METHODS, SCHEMA_PATH, load_yaml, run_config
    from weldfilm.methods import ABLATION_METHOD, FEATURE_CACHE_METHODS, build_method

    schema = load_yaml(SCHEMA_PATH.read_text())
    assert schema["properties"]["methods"]["items"]["enum"] == list(REGISTRY) == list(METHODS)
    assert ABLATION_METHOD == "causal_film" and FEATURE_CACHE_METHODS == ("causal_film",)
    for name in REGISTRY:
        method = build_method(run_config(cfg, name, 0), tmp_path / name, device="cpu", feature_dir=None)
        assert isinstance(method, get_method(name)) and method.device == torch.device("cpu")
    unfair = run_config(cfg, "causal_film", 0)
    unfair["train"]["selection_split"] = "test"
    with pytest.raises(ConfigError, match="selects on VAL only"):
        build_method(unfair, tmp_path / "unfair")

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


def test_layers_import_downwards_only():
    """The package never imports from scripts/; the data services (weldfilm/data, features.py) and the
    foundations (paths, config, run_keys) import nothing of the methods layer but its torch-free registry."""
    import ast
    from pathlib import Path

    import weldfilm

    root = Path(weldfilm.__file__).parent
    lower = [root / "features.py", root / "paths.py", root / "config.py", root / "run_keys.py",
             *sorted((root / "data").rglob("*.py"))]
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(("scripts", "snakemake_job")), f"{path} imports {name}"
                if path in lower:
                    assert not name.startswith("weldfilm.methods."), f"{path} imports {name} (methods layer)"
