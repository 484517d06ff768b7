"""Atomic writes, JSON errors and the CLI's error handling."""

import json

import pytest

from weldfilm import cli
from weldfilm.errors import CheckpointError
from weldfilm.io import atomic_path, read_json, stable_hash, write_json


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "table.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "sub" / "x.json"
    write_json(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]


def test_read_json_names_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_json(tmp_path / "nope.json")
    bad = tmp_path / "metrics.json"
    bad.write_text("{not json")
    with pytest.raises(CheckpointError, match="metrics.json is corrupt"):
        read_json(bad, "metrics file")


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_cli_reports_user_errors_without_traceback(tmp_path, capsys):
    rc = cli.main(["manifest", "--data-root", str(tmp_path / "missing"), "--out", str(tmp_path / "m.csv")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "weldfilm manifest: error:" in err and "missing" in err and "Traceback" not in err


def test_cli_without_command_shows_usage(capsys):
    with pytest.raises(SystemExit):
        cli.main([])
    assert "COMMAND" in capsys.readouterr().out


def test_atomic_outputs_get_the_usual_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    write_json(tmp_path / "m.json", {"a": 1})
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o666 & ~mask
