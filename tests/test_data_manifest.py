"""Run discovery and the manifest (paper mode, seeded scan mode, determinism, exclusion, CLI)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from weldfilm.cli import main as cli_main
from weldfilm.data.layout import discover_runs
from weldfilm.data.manifest import MANIFEST_COLUMNS, build_manifest, configuration_fields, read_manifest
from weldfilm.errors import DataError


def make_run_folders(root, runs_per_code: dict[int, int], configuration="good_weld_16_11-18-22_plane_plate") -> list[str]:
    """Empty run folders (enough for discovery and manifests, which open no file)."""
    subdirs, number = [], 0
    for code, count in runs_per_code.items():
        for _ in range(count):
            subdir = f"{configuration}_{code:02d}/11-18-22-{number:04d}-{code:02d}"
            (root / subdir / "images").mkdir(parents=True)
            subdirs.append(subdir)
            number += 1
    return subdirs


def test_discovery_any_depth_and_duplicates_kept(tmp_path):
    (tmp_path / "good_weld" / "good_weld_16_plate" / "11-18-22-0001-00").mkdir(parents=True)
    (tmp_path / "defect_data_weld" / "porosity_weld_17" / "11-18-22-0001-03").mkdir(parents=True)
    (tmp_path / "other_config" / "11-18-22-0001-00" / "images").mkdir(parents=True)
    (tmp_path / "other_config" / "not-a-run").mkdir()
    runs = discover_runs(tmp_path)
    assert [r.subdir for r in runs] == ["defect_data_weld/porosity_weld_17/11-18-22-0001-03",
                                        "good_weld/good_weld_16_plate/11-18-22-0001-00",
                                        "other_config/11-18-22-0001-00"]
    assert [r.class_code for r in runs] == [3, 0, 0]
    assert runs[1].run_id == runs[2].run_id  # same id in two configuration folders: both kept


def test_discovery_unknown_code_and_empty_root(tmp_path):
    with pytest.raises(DataError, match="no run folder"):
        discover_runs(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        discover_runs(tmp_path / "absent")
    (tmp_path / "cfg" / "11-18-22-0001-42").mkdir(parents=True)
    with pytest.raises(DataError, match="11-18-22-0001-42.*unknown class code 42"):
        discover_runs(tmp_path)


def test_scan_split_proportions_and_stratification(tmp_path):
    counts = {0: 40, **{code: 6 for code in range(1, 12)}, 5: 7}
    make_run_folders(tmp_path, counts)
    table = build_manifest(tmp_path, tmp_path / "out" / "manifest.csv", seed=3)
    assert list(table.columns) == MANIFEST_COLUMNS
    train = table[table.SPLIT == "TRAIN"]
    assert len(train) == 28 and set(train.CLASS_CODE) == {"00"}  # 70 % of 40 good, good only
    per_class = pd.crosstab(table.CLASS_CODE, table.SPLIT)
    assert (abs(per_class["VAL"] - per_class["TEST"]) <= 1).all()  # every class halves into VAL / TEST
    assert per_class.loc["05", ["VAL", "TEST"]].sum() == 7
    assert abs((table.SPLIT == "VAL").sum() - (table.SPLIT == "TEST").sum()) <= 1
    other_seed = build_manifest(tmp_path, tmp_path / "other.csv", seed=4)
    assert list(other_seed.SPLIT) != list(table.SPLIT)


def test_scan_manifest_is_byte_identical_for_same_seed(tmp_path):
    make_run_folders(tmp_path / "data", {0: 10, 3: 4, 7: 3})
    build_manifest(tmp_path / "data", tmp_path / "a.csv", seed=0)
    build_manifest(tmp_path / "data", tmp_path / "b.csv", seed=0)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    read = read_manifest(tmp_path / "a.csv")
    assert read.CLASS_CODE.tolist()[0] == "00" and set(read.SPLIT) == {"TRAIN", "VAL", "TEST"}


def test_exclusion_keeps_other_splits_and_is_recorded(tmp_path):
    subdirs = make_run_folders(tmp_path / "data", {0: 10, 2: 4})
    full = build_manifest(tmp_path / "data", tmp_path / "full.csv", seed=0)
    excluded = build_manifest(tmp_path / "data", tmp_path / "ex.csv", seed=0, exclude_runs=[subdirs[0]])
    assert subdirs[0] not in set(excluded.SUBDIRS) and len(excluded) == len(full) - 1
    merged = full.merge(excluded, on="SUBDIRS", suffixes=("_full", "_ex"))
    assert (merged.SPLIT_full == merged.SPLIT_ex).all()
    sidecar = json.loads((tmp_path / "ex.json").read_text())
    assert sidecar["excluded_runs"] == [subdirs[0]] and sidecar["mode"] == "scan" and "git_commit" in sidecar["provenance"]
    with pytest.raises(DataError, match="not in the manifest.*typo-run"):
        build_manifest(tmp_path / "data", tmp_path / "bad.csv", exclude_runs=["cfg/typo-run"])


def test_paper_manifest_split_used_exactly_and_missing_runs_listed(tmp_path):
    subdirs = make_run_folders(tmp_path / "data", {0: 3, 4: 2})
    paper = pd.DataFrame({"CATEGORY": "x", "WELD_TYPE": "FILLET", "THICKNESS_MM": "3", "STEEL_TYPE": "FE410",
                          "SAMPLES": "5", "CURRENT_A": "200", "VOLTAGE_V": "20", "GAS_BAR": "3",
                          "ROBOT_SPEED_CPM": "30", "DIRECTORY": "/authors/path", "SUBDIRS": subdirs,
                          "SPLIT": ["TRAIN", "VAL", "TEST", "val", "TEST"]})
    paper.to_csv(tmp_path / "paper.csv", index=False)
    table = build_manifest(tmp_path / "data", tmp_path / "m.csv", paper_manifest=tmp_path / "paper.csv")
    assert dict(zip(table.SUBDIRS, table.SPLIT)) == dict(zip(subdirs, ["TRAIN", "VAL", "TEST", "VAL", "TEST"]))
    assert set(table.CURRENT_A) == {"200"} and set(table.CLASS_CODE) == {"00", "04"}
    missing = paper.copy()
    missing.loc[5] = missing.loc[0]
    missing.loc[5, "SUBDIRS"] = "cfg/11-18-22-0999-01"
    missing.to_csv(tmp_path / "paper_missing.csv", index=False)
    with pytest.raises(DataError, match=r"1 run\(s\) not found.*cfg/11-18-22-0999-01"):
        build_manifest(tmp_path / "data", tmp_path / "m2.csv", paper_manifest=tmp_path / "paper_missing.csv")
    # the same run excluded -> the paper's split of the others is kept
    table = build_manifest(tmp_path / "data", tmp_path / "m3.csv", paper_manifest=tmp_path / "paper_missing.csv",
                           exclude_runs=["cfg/11-18-22-0999-01"])
    assert len(table) == 5


def test_paper_manifest_found_one_level_deeper(tmp_path):
    (tmp_path / "data" / "good_weld" / "cfg_a" / "11-18-22-0001-00").mkdir(parents=True)
    pd.DataFrame({"SUBDIRS": ["cfg_a/11-18-22-0001-00"], "SPLIT": ["TRAIN"]}).to_csv(tmp_path / "p.csv", index=False)
    table = build_manifest(tmp_path / "data", tmp_path / "m.csv", paper_manifest=tmp_path / "p.csv")
    assert table.SUBDIRS.tolist() == ["good_weld/cfg_a/11-18-22-0001-00"]


def test_read_manifest_errors_name_file_and_problem(tmp_path):
    make_run_folders(tmp_path / "data", {0: 4})
    table = build_manifest(tmp_path / "data", tmp_path / "m.csv")
    bad_split = table.copy()
    bad_split.loc[0, "SPLIT"] = "HOLDOUT"
    bad_split.to_csv(tmp_path / "bad_split.csv", index=False)
    with pytest.raises(DataError, match=r"bad_split.csv.*HOLDOUT"):
        read_manifest(tmp_path / "bad_split.csv")
    table.drop(columns="SUBDIRS").to_csv(tmp_path / "no_subdirs.csv", index=False)
    with pytest.raises(DataError, match=r"no_subdirs.csv lacks column\(s\) \['SUBDIRS'\]"):
        read_manifest(tmp_path / "no_subdirs.csv")
    with pytest.raises(DataError, match="does not exist"):
        read_manifest(tmp_path / "absent.csv")


def test_configuration_fields_from_folder_name():
    assert configuration_fields("porosity_weld_17_12-22-22_plane_plate_BSK46") == {
        "CATEGORY": "porosity_weld", "WELD_TYPE": "NON_FILLET", "STEEL_TYPE": "BSK46"}
    assert configuration_fields("good_weld_12_11-24-22_fillet_joint")["WELD_TYPE"] == "FILLET"
    assert configuration_fields("whatever") == {}


def test_manifest_cli(tmp_path, capsys):
    make_run_folders(tmp_path / "data", {0: 4, 1: 2})
    out = tmp_path / "m.csv"
    assert cli_main(["manifest", "--data-root", str(tmp_path / "data"), "--out", str(out), "--seed", "1"]) == 0
    assert len(read_manifest(out)) == 6
    assert cli_main(["manifest", "--data-root", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_scan_split_is_stratified_by_configuration_folder():
    """Every good configuration gives ~70 % of its runs to TRAIN and splits the rest evenly: no plate,
    lighting or process preset lands mostly in one of VAL / TEST."""
    from collections import Counter

    from weldfilm.data.layout import run_ref
    from weldfilm.data.manifest import scan_split

    runs = [run_ref(f"good_weld_{c}_plane_plate/11-18-22-{c}{i:03d}-00") for c in range(4) for i in range(10)]
    runs += [run_ref(f"porosity_weld_{c}/12-22-22-{c}{i:03d}-03") for c in range(2) for i in range(6)]
    split = scan_split(runs, seed=3)
    per_config = Counter((s.split("/")[0], split[s]) for s in split)
    for c in range(4):
        config = f"good_weld_{c}_plane_plate"
        assert per_config[(config, "TRAIN")] == 7
        assert abs(per_config[(config, "VAL")] - per_config[(config, "TEST")]) <= 1
    for c in range(2):
        assert per_config[(f"porosity_weld_{c}", "VAL")] == per_config[(f"porosity_weld_{c}", "TEST")] == 3
    assert scan_split(runs, seed=3) == split
