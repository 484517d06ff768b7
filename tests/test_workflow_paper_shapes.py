"""The `paper_shapes` profile end to end (markers ``workflow`` and ``slow``; CI runs it).

`paper_shapes` is the `paper` profile (every preprocessing shape, every method, both protocols, the
tables) on the synthetic data with tiny-width backbones of the paper checkpoints' depth and token
geometry, one seed, one ablation and one epoch. This test runs it from a clean working directory as a
user would (`snakemake --cores 2 --resources gpu=1 --config profile=paper_shapes`) and checks that every
run was scored and that the shapes the runs recorded are the paper's, not the tiny default's.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import soundfile
import yaml

from test_workflow import make_workdir, run_snakemake
from weldfilm.config import prepare
from weldfilm.paper import FIGURES, FIGURES_DIR, PAPER_OUTPUTS, TABLES, TABLES_DIR

# Token counts of the published checkpoints at the paper's inputs (weldfilm.models.sizes):
VJEPA2_TOKENS = 256  # 32 frames / tubelet 2 x (64 px / patch 16)^2
AST_TOKENS = 659  # 256 x 64 mel stretched to 1024 x 128, patch 16 at strides 14 x 14: 9 x 73 + 2
DINOV3_TOKENS = 201  # (224 / 16)^2 + CLS + 4 registers, per view
STFT_BINS = 8193  # n_fft 16384 // 2 + 1
DINO_VITB8_TOKENS = 785  # (224 / 8)^2 + CLS


@pytest.mark.workflow
@pytest.mark.slow
def test_paper_shapes_profile_runs_end_to_end(tmp_path):
    workdir = make_workdir(tmp_path)
    result = run_snakemake(workdir, "--cores", "2", "--resources", "gpu=1", "--config", "profile=paper_shapes",
                           timeout=3600)
    assert result.returncode == 0, result.stdout[-6000:]
    cfg = prepare({**yaml.safe_load((workdir / "config.yaml").read_text()), "profile": "paper_shapes"})
    results = workdir / cfg["results"]
    assert len(cfg["methods"]) == 4 and set(cfg["protocols"]) == {"fair", "paper_faithful"} and cfg["ablations"]

    # every run of the DAG scored on VAL and TEST with a finite I-AUROC
    runs = {(protocol, method): results / "runs" / protocol / method / f"seed{seed}"
            for protocol in cfg["protocols"] for method in cfg["methods"] for seed in cfg["seeds"]}
    runs.update({("fair", f"ablation {name}"): results / "ablations" / name / f"seed{seed}"
                 for name in cfg["ablations"] for seed in cfg["seeds"]})
    for key, run in runs.items():
        for split in ("val", "test"):
            metrics = json.loads((run / "eval" / split / "metrics.json").read_text())
            assert math.isfinite(metrics["i_auroc"]) and 0.0 <= metrics["i_auroc"] <= 1.0, (key, split)
            assert metrics["n"] >= 2, (key, split)

    # the shapes the runs saw are the paper's
    pre = cfg["preprocess"]
    causal_film = json.loads((runs["fair", "causal_film"] / "metadata.json").read_text())["token_shapes"]
    assert (pre["video_frames"], pre["frame_size"], pre["audio_frames"], pre["audio_mel_bins"]) == (32, 64, 256, 64)
    assert causal_film["video_tokens"][0] == VJEPA2_TOKENS
    assert causal_film["audio_tokens"][0] == AST_TOKENS
    assert causal_film["image_tokens"][:3] == [pre["num_angles"], 2, DINOV3_TOKENS]
    assert causal_film["result_layers"] == cfg["causal_film"]["result_layers"] == [20, 31]
    assert causal_film == json.loads((runs["fair", "ablation mean_views"] / "metadata.json").read_text())["token_shapes"]
    late_fusion = json.loads((runs["fair", "late_fusion"] / "metadata.json").read_text())
    assert late_fusion["token_shapes"]["audio"] == [1, STFT_BINS, cfg["late_fusion"]["audio_frames"]] == [1, 8193, 1024]
    assert late_fusion["describe"]["input_resolution"]["audio"]["sr"] == 192000
    m3dm = json.loads((runs["fair", "m3dm"] / "metadata.json").read_text())["token_shapes"]
    assert m3dm["rgb_tokens"][0] == DINO_VITB8_TOKENS
    m = cfg["m3dm"]
    assert m3dm["point_groups"] == [m["point_num_groups"], m["point_trans_dim"] * len(m["point_taps"])] == [1024, 1152]
    dinomaly = json.loads((runs["fair", "dinomaly"] / "metadata.json").read_text())["describe"]["input_resolution"]
    assert (dinomaly["post_weld_images"]["resize"], dinomaly["post_weld_images"]["crop"]) == (448, 392)

    # the data: 192 kHz sound where Late Fusion reads 192 kHz, photos no smaller than Dinomaly's resize
    flac = next((workdir / cfg["data"]["root"]).rglob("*.flac"))
    assert soundfile.info(str(flac)).samplerate == cfg["late_fusion"]["audio_sr"]
    assert cfg["synthetic"]["image_size"] >= cfg["dinomaly"]["resize"]
    validation = json.loads((results / "data" / "validation.json").read_text())
    padded = [run for run, entry in validation["runs"].items()
              if any("fewer than num_angles" in note for note in entry["notes"])]
    assert padded, "runs with fewer photos than views went through every method (synthetic.fewer_photos_fraction)"

    # the tables, figures and paper, with every method under both protocols and the ablation
    paper = results / "paper"
    expected = ([paper / TABLES_DIR / name for name in TABLES] + [paper / FIGURES_DIR / name for name in FIGURES]
                + [paper / name for name in PAPER_OUTPUTS])
    assert [str(path) for path in expected if not path.is_file()] == []
    main_table = pd.read_csv(paper / TABLES_DIR / "main.csv")
    assert main_table["method"].tolist() == cfg["methods"]
    for protocol in cfg["protocols"]:  # both protocols' TEST I-AUROC is a number in [0, 1] for every method
        assert main_table[f"{protocol}_i_auroc_mean"].between(0, 1).all(), protocol
    assert set(cfg["ablations"]) <= set(pd.read_csv(paper / TABLES_DIR / "ablations.csv")["ablation"])
    shapes_table = (paper / TABLES_DIR / "token_shapes.csv").read_text()
    assert str(AST_TOKENS) in shapes_table and str(VJEPA2_TOKENS) in shapes_table and str(STFT_BINS) in shapes_table
