"""Paper figures from fabricated results files: every figure written as PNG + PDF, errors named."""

import json

import pandas as pd
import pytest

from paper_fakes import tiny_config, write_results
from weldfilm.errors import CheckpointError
from weldfilm.paper import FIGURES
from weldfilm.paper.figures import build_figures, loss_term_columns, modality_figure, training_curve_figure
from weldfilm.paper.results import ResultsReader


pytestmark = pytest.mark.slow  # the module fixture renders every figure with matplotlib (~12 s)

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_figures")
    cfg = tiny_config()
    write_results(root / "results", cfg)
    paths = build_figures(cfg, root / "results", root / "figures")
    return cfg, root, paths


def test_every_figure_is_written_as_png_and_pdf(built):
    _, root, paths = built
    assert sorted(p.name for p in paths) == sorted(FIGURES)
    for path in paths:
        head = path.read_bytes()[:8]
        if path.suffix == ".png":
            assert head.startswith(b"\x89PNG") and path.stat().st_size > 5000
        elif path.suffix == ".pdf":
            assert head.startswith(b"%PDF") and path.stat().st_size > 1000
    assert not [p for p in (root / "figures").iterdir() if p.name.startswith(".")]  # no temp files left


def test_figure_provenance_lists_files_read(built):
    cfg, root, _ = built
    record = json.loads((root / "figures" / "figures.provenance.json").read_text())["figures"]
    assert record["roc_pr"]["files_read"] == sorted(
        f"runs/fair/{m}/seed0/eval/test/scores.csv" for m in cfg["methods"])
    assert len(record["training_curves"]["files_read"]) == len(cfg["seeds"])
    assert record["modalities"]["files_read"] == ["data/card/modalities.png"]


def test_loss_terms_exclude_bookkeeping_columns():
    log = pd.DataFrame({"epoch": [0], "lr": [1e-3], "loss": [1.0], "l1": [0.2], "val_auroc": [0.5],
                        "selected": [True], "time_s": [1.0], "submodel": ["audio"], "audio_loss": [0.3]})
    assert loss_term_columns(log) == ["loss", "audio_loss", "l1"]


def test_missing_results_are_named(tmp_path):
    cfg = tiny_config(seeds=(0,))
    with pytest.raises(CheckpointError, match="data/card/modalities.png"):
        modality_figure(cfg, ResultsReader(tmp_path))
    with pytest.raises(CheckpointError, match="runs/fair/causal_film/seed0/train_log.jsonl"):
        training_curve_figure(cfg, ResultsReader(tmp_path))
