"""``weldfilm score``: each method, trained briefly on the tiny synthetic set, scores held-out synthetic
runs (another generator seed, so they were in no split) and explains the scores; bad input stops it
with validate's error and writes nothing."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import TINY_PREPROCESS, TINY_SYNTHETIC

METHODS = ("causal_film", "m3dm", "dinomaly", "late_fusion")


def _config(results: Path, data_root: Path) -> dict:
    from weldfilm.config import DEFAULT_CONFIG, deep_merge, prepare

    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw.pop("profile", None)
    backbones = results / "backbones" / "tiny"
    return prepare(deep_merge(raw, {
        "results": str(results), "seeds": [0],
        "data": {"source": "synthetic", "root": str(data_root)},
        "synthetic": copy.deepcopy(TINY_SYNTHETIC), "preprocess": copy.deepcopy(TINY_PREPROCESS),
        "backbones": {"source": "tiny", "dir": str(backbones), "video": str(backbones / "vjepa2"),
                      "audio": str(backbones / "ast"), "image": str(backbones / "dinov3"),
                      "clip": str(backbones / "clip"), "m3dm_rgb": str(backbones / "dino_vitb8"),
                      "dinomaly_encoder": str(backbones / "dinov2_reg")},
        "causal_film": {"d_model": 16, "sensor_hidden_dim": 8},
        "train": {"epochs": 2, "batch_size": 4, "warmup_epochs": 0, "device": "cpu"},
        "evaluation": {"bootstrap": 10},
        "m3dm": {"image_size": 64, "cloud_size": 32, "point_trans_dim": 16, "point_depth": 2, "point_heads": 2,
                 "point_group_size": 8, "point_num_groups": 16, "point_taps": [0, 1], "f_coreset": 0.25,
                 "map_size": 16, "blur_sigma": 1.0},
        "dinomaly": {"resize": 32, "crop_size": 28, "epochs": 2, "batch_size": 4, "map_size": 16, "blur_sigma": 1.0,
                     "warmup_iters": 2, "hard_ramp_iters": 4},
        "late_fusion": {"n_fft": 64, "hop_length": 512, "audio_frames": 16, "video_frames": 4, "frame_size": 16,
                        "audio_hidden_channels": [8], "video_feature_dim": 32, "video_hidden_dims": [16, 8],
                        "batch_size": 8, "audio_epochs": 2, "video_epochs": 2},
    }))


pytestmark = pytest.mark.slow  # the module fixture trains every method

@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data_root):
    """One short run of every method (evaluated on VAL and TEST) and held-out runs of another seed."""
    from weldfilm.config import run_config
    from weldfilm.data.manifest import build_manifest
    from weldfilm.data.synthetic import generate
    from weldfilm.evaluation import evaluate_splits
    from weldfilm.models.tiny import write_tiny_backbones
    from weldfilm.runner import train_run

    base = tmp_path_factory.mktemp("score")
    cfg = _config(base / "results", tiny_data_root)
    build_manifest(tiny_data_root, base / "results" / "data" / "manifest.csv")
    write_tiny_backbones(cfg["backbones"]["dir"], seed=0)
    heldout = base / "heldout"
    generate(heldout, **{**TINY_SYNTHETIC, "seed": 5, "good_runs": 6, "runs_per_class": 1,
                         "fewer_photos_fraction": 0.2})
    runs = {}
    for method in METHODS:
        run_dir = base / "runs" / method
        train_run(run_config(cfg, method, seed=0, protocol="fair"), run_dir)
        evaluate_splits(run_dir, ["val", "test"], {s: run_dir / "eval" / s for s in ("val", "test")})
        runs[method] = run_dir
    folders = sorted(p for p in heldout.rglob("*") if p.is_dir() and (p / "images").is_dir())
    return {"base": base, "runs": runs, "heldout": folders}


@pytest.fixture(scope="module")
def scored(trained):
    """``weldfilm score`` of every held-out run with every method (Causal-FiLM with saliency maps)."""
    from weldfilm.cli import main

    out = {}
    for method, run_dir in trained["runs"].items():
        target = trained["base"] / "scored" / method / "scores.json"
        extra = ["--saliency"] if method == "causal_film" else []
        assert main(["score", "--run", str(run_dir), "--input", *map(str, trained["heldout"]),
                     "--out", str(target), *extra]) == 0
        out[method] = (target, json.loads(target.read_text()))
    return out


@pytest.mark.parametrize("method", METHODS)
def test_report_has_score_decision_threshold_and_explanation(scored, trained, method):
    target, report = scored[method]
    val = json.loads((trained["runs"][method] / "eval" / "test" / "metrics.json").read_text())["threshold"]
    assert report["method"] == method and report["n_inputs"] == len(trained["heldout"])
    assert report["threshold"]["value"] == val["value"] and report["threshold"]["source_split"] == "val"
    assert "Youden" in report["threshold"]["rule"] and report["threshold"]["run"] == str(trained["runs"][method])
    assert [item["input"] for item in report["inputs"]] == [str(p) for p in trained["heldout"]]
    for item in report["inputs"]:
        assert item["decision"] == ("defective" if item["score"] >= item["threshold"] else "good")
        explanation = item["explanation"]
        if method == "causal_film":
            views = explanation["views"]
            photos = len(list((Path(item["input"]) / "images").glob("*.jpg")))
            assert len(views) == TINY_PREPROCESS["num_angles"]
            assert [v["padded"] for v in views] == [i >= photos for i in range(len(views))]
            assert sum(v["max_share"] for v in views if v["pooled"]) == pytest.approx(1.0)
            assert not any(v["pooled"] for v in views if v["padded"])  # view_padding: exclude
            assert views[explanation["driving_view"]]["pooled"]
            for name in ("video", "audio", "sensor"):
                influence = explanation["modalities"][name]
                assert influence["influence"] == pytest.approx(item["score"] - influence["score_neutralised"])
            saliency = explanation["saliency"]
            assert saliency["label"].startswith("saliency") and len(saliency["maps"]) == min(photos, len(views))
            for entry in saliency["maps"]:
                assert (target.parent / entry["png"]).stat().st_size > 0 and entry["kind"] == "saliency"
        elif method in ("m3dm", "dinomaly"):
            maps = explanation["maps"]
            assert len(maps) == (1 if method == "m3dm" else
                                 len(list((Path(item["input"]) / "images").glob("*.jpg"))))
            for entry in maps:
                png = target.parent / entry["png"]
                assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and entry["kind"] == "anomaly_map"
                assert png.parent.name == item["run_id"] and png.parent.parent.name == "scores_maps"
            if method == "dinomaly":
                assert item["score"] == pytest.approx(sum(m["image_score"] for m in maps) / len(maps), rel=1e-5)
        else:
            before = explanation["before_fusion"]
            fusion = explanation["fusion"]
            assert item["score"] == pytest.approx(fusion["w_audio"] * before["audio"]["z"]
                                                  + fusion["w_video"] * before["video"]["z"])


def test_scores_of_known_runs_match_evaluate(trained, tmp_path):
    """A TEST run scored as a new weld gets the score `evaluate` gave it (same model, same reading)."""
    import pandas as pd

    from weldfilm.scoring import score_runs

    data_root = Path(json.loads((trained["runs"]["m3dm"] / "metadata.json").read_text())["config"]["data"]["root"])
    for method in METHODS:
        table = pd.read_csv(trained["runs"][method] / "eval" / "test" / "scores.csv").head(2)
        report = score_runs(trained["runs"][method], [data_root / s for s in table["sample_id"]], tmp_path / f"{method}.json")
        assert [i["score"] for i in report["inputs"]] == pytest.approx(table["score"].tolist(), rel=1e-4, abs=1e-6)


def test_defective_runs_cross_the_threshold_more_often_than_good_ones(scored):
    rates = {}
    for method, (_, report) in scored.items():
        flagged = {0: [], 1: []}
        for item in report["inputs"]:
            flagged[int(item["class_code_in_name"] != 0)].append(item["decision"] == "defective")
        rates[method] = {label: sum(v) / len(v) for label, v in flagged.items()}
    # M3DM (no gradient training) separates the synthetic defects reliably after this tiny fit; the two-epoch
    # Causal-FiLM / Dinomaly / Late Fusion runs do not reliably (their rates are in the message)
    assert rates["m3dm"][1] > rates["m3dm"][0], rates


def test_missing_flac_stops_with_validates_error_and_writes_nothing(trained, tmp_path, capsys):
    from weldfilm.cli import main

    good = tmp_path / "inputs" / "a"
    broken = tmp_path / "inputs" / "b" / trained["heldout"][1].name
    shutil.copytree(trained["heldout"][0], good / trained["heldout"][0].name)
    shutil.copytree(trained["heldout"][1], broken)
    flac = broken / f"{broken.name}.flac"
    flac.unlink()
    out = tmp_path / "out" / "report.json"
    for method in ("m3dm", "causal_film"):
        code = main(["score", "--run", str(trained["runs"][method]), "--input", str(good / trained["heldout"][0].name),
                     str(broken), "--out", str(out)])
        err = capsys.readouterr().err
        assert code != 0
        assert str(flac) in err and f"run b/{broken.name}" in err and "nothing was written" in err
        assert not out.parent.exists() or not any(out.parent.iterdir())


def test_a_folder_that_is_not_a_run_is_refused(trained, tmp_path, capsys):
    from weldfilm.cli import main

    odd = tmp_path / "not-a-run"
    shutil.copytree(trained["heldout"][0], odd)
    code = main(["score", "--run", str(trained["runs"]["m3dm"]), "--input", str(odd), "--out", str(tmp_path / "o.json")])
    assert code != 0 and "not-a-run" in capsys.readouterr().err and not (tmp_path / "o.json").exists()


def test_threshold_comes_from_val_and_a_run_without_evaluation_is_refused(tmp_path):
    from weldfilm.errors import CheckpointError
    from weldfilm.io import write_json
    from weldfilm.scoring import run_threshold

    with pytest.raises(CheckpointError, match="weldfilm evaluate"):
        run_threshold(tmp_path)
    write_json(tmp_path / "eval" / "test" / "metrics.json", {"threshold": {"value": 2.0, "source_split": "test"}})
    same = run_threshold(tmp_path)
    assert same["value"] == 2.0 and same["source_split"] == "test" and "threshold_split: same" in same["note"]
    write_json(tmp_path / "eval" / "val" / "metrics.json", {"threshold": {"value": 1.5, "source_split": "val"}})
    val = run_threshold(tmp_path)
    assert val["value"] == 1.5 and val["source_split"] == "val" and val["note"] is None and "Youden" in val["rule"]
    write_json(tmp_path / "eval" / "test" / "metrics.json", {"i_auroc": 0.9})  # no threshold: named, with the fix
    with pytest.raises(CheckpointError, match=r"eval/test/metrics\.json holds no threshold.*weldfilm evaluate"):
        run_threshold(tmp_path)
