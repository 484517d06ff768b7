"""Bad input: every reader names the run and the file; validation reports every broken run."""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest

from weldfilm.cli import main as cli_main
from weldfilm.data import readers
from weldfilm.data.layout import discover_runs
from weldfilm.data.manifest import build_manifest
from weldfilm.data.validate import validate_runs
from weldfilm.errors import DataError

SIZES = {"video_frames": 4, "frame_size": 16, "image_size": 16, "num_angles": 5, "audio_mel_bins": 8,
         "audio_frames": 16, "sensor_length": 16}


@pytest.fixture
def copied(tiny_data_root, tmp_path):
    """A data root with copies of the first good and first defective run; returns (root, [RunRef, RunRef])."""
    runs = discover_runs(tiny_data_root)
    picks = [next(r for r in runs if r.label == 0), next(r for r in runs if r.label == 1)]
    root = tmp_path / "data"
    for run in picks:
        shutil.copytree(tiny_data_root / run.subdir, root / run.subdir)
    return root, picks


def break_file(kind: str, files: dict) -> str:
    """Break one file of a run; return the file name the error must mention."""
    if kind == "zero_byte_avi":
        files["avi"].write_bytes(b"")
        return files["avi"].name
    if kind == "truncated_flac":
        data = files["flac"].read_bytes()
        files["flac"].write_bytes(data[: len(data) // 2])
        return files["flac"].name
    table = pd.read_csv(files["csv"])
    if kind == "csv_missing_channel":
        table.drop(columns=["Feed"]).to_csv(files["csv"], index=False)
        return files["csv"].name
    if kind == "csv_non_numeric":
        table["Pressure"] = table["Pressure"].astype(object)
        table.loc[1, "Pressure"] = "n/a"
        table.to_csv(files["csv"], index=False)
        return files["csv"].name
    if kind == "empty_images":
        shutil.rmtree(files["images"])
        files["images"].mkdir()
        return "images"
    if kind == "corrupt_image":
        first = sorted(files["images"].iterdir())[0]
        first.write_bytes(b"not a jpeg")
        return first.name
    raise ValueError(kind)


READ = {
    "zero_byte_avi": lambda run, f: readers.read_video(run.subdir, f["avi"], 4, 16),
    "truncated_flac": lambda run, f: readers.read_audio(run.subdir, f["flac"], full_decode=True),
    "csv_missing_channel": lambda run, f: readers.read_sensor(run.subdir, f["csv"]),
    "csv_non_numeric": lambda run, f: readers.read_sensor(run.subdir, f["csv"]),
    "empty_images": lambda run, f: readers.read_images(run.subdir, f["images"], 5, 16),
    "corrupt_image": lambda run, f: readers.read_images(run.subdir, f["images"], 5, 16),
}
MESSAGE = {"zero_byte_avi": "empty \\(0 bytes\\)", "truncated_flac": "audio", "csv_missing_channel": "\\['Feed'\\]",
           "csv_non_numeric": "\\['Pressure'\\]", "empty_images": "no post-weld image", "corrupt_image": "cannot be decoded"}


@pytest.mark.parametrize("kind", sorted(READ))
def test_reader_error_names_run_and_file(copied, kind):
    root, (run, _) = copied
    files = run.files(root)
    name = break_file(kind, files)
    with pytest.raises(DataError) as info:
        READ[kind](run, files)
    message = str(info.value)
    assert run.subdir in message and name in message
    assert re.search(MESSAGE[kind], message), message


def test_missing_files_and_allowed_missing_images(copied):
    root, (run, _) = copied
    files = run.files(root)
    files["csv"].unlink()
    with pytest.raises(DataError, match=f"{run.subdir}.*{files['csv'].name}: sensor file is missing"):
        readers.read_sensor(run.subdir, files["csv"])
    shutil.rmtree(files["images"])
    images, count = readers.read_images(run.subdir, files["images"], 3, 8, allow_missing=True)
    assert count == 0 and images.shape == (3, 3, 8, 8) and not images.any()


def test_validate_reports_every_broken_run_then_raises(copied, tmp_path):
    root, (good, defect) = copied
    build_manifest(root, tmp_path / "manifest.csv")
    break_file("zero_byte_avi", good.files(root))
    break_file("csv_non_numeric", good.files(root))
    break_file("empty_images", defect.files(root))
    out = tmp_path / "validation.json"
    with pytest.raises(DataError, match="(?s)2 of 2 run.*data.exclude_runs") as info:
        validate_runs(root, tmp_path / "manifest.csv", out, SIZES)
    assert good.subdir in str(info.value) and defect.subdir in str(info.value)
    report = json.loads(out.read_text())  # written before raising
    assert report["unusable_runs"] == sorted([good.subdir, defect.subdir])
    assert set(report["runs"][good.subdir]["problems"]) == {"video", "sensor"}
    assert set(report["runs"][defect.subdir]["problems"]) == {"images"}
    # with missing images allowed, the defective run passes and carries a note
    with pytest.raises(DataError, match="1 of 2"):
        validate_runs(root, tmp_path / "manifest.csv", out, SIZES, allow_missing_images=True)
    assert "fewer than num_angles" in json.loads(out.read_text())["runs"][defect.subdir]["notes"][0]
    # worker processes (the rule's threads) write the same report, in manifest order
    alone = json.loads(out.read_text())
    with pytest.raises(DataError, match="1 of 2"):
        validate_runs(root, tmp_path / "manifest.csv", tmp_path / "pooled.json", SIZES, allow_missing_images=True,
                      workers=2)
    pooled = json.loads((tmp_path / "pooled.json").read_text())
    assert {k: v for k, v in pooled.items() if k != "provenance"} == {k: v for k, v in alone.items() if k != "provenance"}


def test_validate_truncated_flac_and_cli(copied, tmp_path, capsys):
    root, (good, _) = copied
    build_manifest(root, tmp_path / "manifest.csv")
    args = ["validate", "--data-root", str(root), "--manifest", str(tmp_path / "manifest.csv"),
            "--out", str(tmp_path / "v.json")]
    assert cli_main(args) == 0
    assert json.loads((tmp_path / "v.json").read_text())["n_unusable"] == 0
    break_file("truncated_flac", good.files(root))
    assert cli_main(args) == 2
    assert good.subdir in capsys.readouterr().err
    assert "audio" in json.loads((tmp_path / "v.json").read_text())["runs"][good.subdir]["problems"]
