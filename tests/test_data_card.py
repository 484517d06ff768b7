"""Dataset card: how far one hand feature separates each defect class from the good runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from weldfilm.data.card import HAND_FEATURES, separability_table, write_dataset_card
from weldfilm.data.layout import CLASS_NAMES
from weldfilm.data.manifest import build_manifest

FEATURES = [name for names in HAND_FEATURES.values() for name in names]


def _frame(per_class: dict[int, dict[str, list[float]]]) -> pd.DataFrame:
    rows = []
    for code, columns in per_class.items():
        n = len(next(iter(columns.values())))
        for i in range(n):
            rows.append({"SUBDIRS": f"c{code}/{i}", "class_code": code,
                         **{f: columns.get(f, [1.0] * n)[i] for f in FEATURES}})
    return pd.DataFrame(rows)


def test_separability_picks_the_best_feature_per_modality_direction_free():
    rng = np.random.default_rng(0)
    good = {"current_mean": list(rng.normal(200, 10, 20)), "audio_rms": list(rng.normal(0.05, 0.01, 20)),
            "photo_contrast": list(rng.normal(40, 5, 20))}
    frame = _frame({0: good,
                    7: {"current_mean": [120.0, 125, 130], "audio_rms": [0.05, 0.06, 0.04], "photo_contrast": [40.0, 41, 39]},
                    3: {"current_mean": [200.0, 201, 199], "audio_rms": [0.2, 0.3, 0.25], "photo_contrast": [80.0, 90, 85]}})
    table = separability_table(frame)
    assert list(table.index) == [f"{c:02d}" for c in sorted(CLASS_NAMES) if c]
    low = table.loc["07"]
    assert low["sensor_auroc"] == 1.0 and low["sensor_feature"] == "current_mean" and low["sensor_direction"] == "lower"
    assert low["best_auroc"] == 1.0 and low["best_modality"] == "sensor" and low["runs"] == 3 and low["good_runs"] == 20
    assert 0.5 <= low["audio_auroc"] < 0.9  # inside the good spread: no clean separation
    high = table.loc["03"]
    assert high["audio_auroc"] == 1.0 and high["audio_direction"] == "higher"
    assert high["photos_auroc"] == 1.0 and high["photos_feature"] == "photo_contrast"
    absent = table.loc["10"]  # a class without runs: n/a, not an error
    assert absent["runs"] == 0 and np.isnan(absent["best_auroc"])


def test_card_writes_separability_of_the_synthetic_signatures(tiny_data_root, tmp_path):
    manifest = tmp_path / "manifest.csv"
    build_manifest(tiny_data_root, manifest)
    result = write_dataset_card(manifest, tiny_data_root, tmp_path / "card",
                                {"video_frames": 4, "frame_size": 32, "image_size": 64, "audio_frames": 32,
                                 "sensor_length": 16})
    table = pd.read_csv(tmp_path / "card" / "separability.csv", dtype={"code": str}).set_index("code")
    assert len(table) == 11 and len(result["separability"]) == 11
    assert table["best_auroc"].between(0.5, 1.0).all()
    # documented process signatures (docs/synthetic.md): one sensor number separates these classes completely
    # (ties go to the first feature of HAND_FEATURES)
    for code in ("03", "07", "09"):  # porosity (no gas), lack of fusion (low current), spatter (unstable arc)
        assert table.loc[code, "sensor_auroc"] == pytest.approx(1.0), code
    assert table.loc["07", "sensor_feature"] == "current_mean" and table.loc["07", "sensor_direction"] == "lower"
    assert table.loc["07", "video_direction"] == "lower"  # lack of fusion: dim arc
    markdown = (tmp_path / "card" / "separability.md").read_text()
    assert "| 07 | lack_of_fusion |" in markdown and "1.00 (current_mean ↓)" in markdown
    assert "`audio_rms` = sound RMS" in markdown


def test_a_broken_recording_is_named_with_its_run_and_file(tiny_data_root, tmp_path):
    import shutil

    from weldfilm.data.card import hand_features
    from weldfilm.data.layout import discover_runs
    from weldfilm.errors import DataError

    run = discover_runs(tiny_data_root)[0]
    root = tmp_path / "data"
    shutil.copytree(tiny_data_root / run.subdir, root / run.subdir)
    flac = run.files(root)["flac"]
    flac.write_bytes(b"not a flac file")
    with pytest.raises(DataError, match=rf"run {run.run_id}: .*{flac.name}: the sound cannot be decoded"):
        hand_features(root, run.subdir)
