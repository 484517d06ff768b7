"""The Snakemake workflow: lint, the job list as a function of the config, config errors, the data
part end to end on a tiny synthetic set, and (marker ``workflow``) the full default workflow."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from weldfilm.config import REPO_ROOT, deep_merge, load_config
from weldfilm.paper import FIGURES, FIGURES_DIR, PAPER_OUTPUTS, TABLES, TABLES_DIR

SNAKEFILE = REPO_ROOT / "workflow" / "Snakefile"
# a tiny synthetic set: 4 good runs in TRAIN at least, one run of each defect class
TINY_DATA = {"synthetic": {"good_runs": 8, "runs_per_class": 1, "duration_s": 0.5, "video_size": 32,
                           "image_size": 64, "num_angles": 2, "audio_sr": 16000, "sensor_hz": 50.0, "workers": 1}}


def run_snakemake(workdir: Path, *args: str, timeout: int = 600, prefix: tuple = ()) -> subprocess.CompletedProcess:
    """Run the project's Snakefile in ``workdir`` (which holds its config.yaml), as a user would;
    ``stdout`` holds Snakemake's output and errors together. ``prefix`` wraps the command (``unshare -n``)."""
    command = [*prefix, sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), *args]
    return subprocess.run(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def make_workdir(path: Path, merge: dict | None = None, replace: dict | None = None) -> Path:
    """A working directory with the project's config.yaml, ``merge`` merged into it and the top-level
    keys of ``replace`` replaced (a ``--configfile`` overlay can only add ablations, not drop them)."""
    path.mkdir(parents=True, exist_ok=True)
    raw = deep_merge(yaml.safe_load((REPO_ROOT / "config.yaml").read_text()), merge or {})
    (path / "config.yaml").write_text(yaml.safe_dump({**raw, **(replace or {})}, sort_keys=False))
    return path


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake dry run as {rule: count}."""
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    counts.pop("total")
    return counts


def expected_job_counts(cfg: dict) -> dict[str, int]:
    """How many jobs of each rule the config asks for (the paper needs all of them)."""
    runs = len(cfg["methods"]) * len(cfg["seeds"]) * len(cfg["protocols"])
    ablation_runs = len(cfg["ablations"]) * len(cfg["seeds"])
    separate = 0 if cfg["workflow"]["evaluate_in_train_job"] else 1  # scoring jobs of their own
    counts = {"manifest": 1, "validate": 1, "dataset_card": 1, "evaluate": runs * separate,
              "evaluate_ablation": ablation_runs * separate, "tables": 1, "figures": 1, "paper": 1, "all": 1}
    # one train job per method and seed: its protocols' runs (Causal-FiLM's also trains the ablations);
    # one per method for the methods of workflow.seeds_together
    for method in list(cfg["methods"]) + (["causal_film"] if cfg["ablations"] else []):
        counts[f"train_{method}"] = 1 if method in cfg["workflow"]["seeds_together"] else len(cfg["seeds"])
    counts["synthesize"] = int(cfg["data"]["source"] == "synthetic")
    counts["tiny_backbones"] = int(cfg["backbones"]["source"] == "tiny")
    # Causal-FiLM runs read a feature cache per split; the default protocols and ablations share one
    uses_cache = cfg["train"]["feature_cache"] and ("causal_film" in cfg["methods"] or cfg["ablations"])
    counts["features"] = 3 if uses_cache else 0
    # the decoded-input store: one job per kind (modality x sizes) some run or its feature cache reads, every split
    if cfg["inputs"]["store"]:
        from weldfilm.config import run_config
        from weldfilm.data import store

        runs = [run_config(cfg, m, s, p) for m in cfg["methods"] for s in cfg["seeds"] for p in cfg["protocols"]]
        runs += [run_config(cfg, "causal_film", s, "fair", a) for a in cfg["ablations"] for s in cfg["seeds"]]
        counts["inputs"] = len({store.kind_name(spec) for run in runs for spec in store.method_kinds(run)})
    return {rule: n for rule, n in counts.items() if n}


def test_scripts_find_the_results_folder_from_their_rules_paths(tmp_path):
    """scripts/tables.py, figures.py and paper.py take the results folder from their inputs/outputs through
    these inverses of the folder functions the Snakefile writes the paths with."""
    from weldfilm import paths

    results = tmp_path / "some" / "results"
    assert paths.results_of_card_file(paths.card_dir(results) / "counts.csv") == results
    assert paths.results_of_paper_dir(paths.paper_dir(results)) == results


def test_lint_reports_nothing(tmp_path):
    result = run_snakemake(make_workdir(tmp_path), "--lint")
    assert result.returncode == 0, result.stdout
    assert "Lints for" not in result.stdout
    assert "Congratulations" in result.stdout


SMALL = {"seeds": [3], "methods": ["causal_film", "m3dm"], "train": {"feature_cache": False},
         "ablations": {"no_film": {"causal_film.use_film": False}, "topk_1.0": {"causal_film.top_k_ratio": 1.0}}}
SEPARATE_SCORING = {"workflow": {"evaluate_in_train_job": False}}


@pytest.mark.slow
@pytest.mark.parametrize("changes", [{}, SMALL, SEPARATE_SCORING], ids=["default", "small", "separate_scoring"])
def test_dry_run_lists_every_job(tmp_path, changes):
    workdir = make_workdir(tmp_path, merge=changes, replace={"ablations": changes["ablations"]} if "ablations" in changes else {})
    result = run_snakemake(workdir, "-n", "--quiet", "rules")
    assert result.returncode == 0, result.stdout
    cfg = load_config(workdir / "config.yaml")
    assert job_counts(result.stdout) == expected_job_counts(cfg)


def test_bad_config_stops_with_the_key_named(tmp_path):
    workdir = make_workdir(tmp_path, merge={"train": {"epochs": 0}, "trian": {"epochs": 3}})
    result = run_snakemake(workdir, "-n")
    assert result.returncode != 0
    assert "config key 'train.epochs'" in result.stdout
    assert "'trian'" in result.stdout  # the misspelt section is named too


@pytest.mark.slow
def test_missing_pretrained_backbones_stop_the_workflow(tmp_path):
    missing = str(tmp_path / "no-such-checkpoint")
    workdir = make_workdir(tmp_path / "work", merge={"backbones": {"source": "pretrained", "video": missing}})
    result = run_snakemake(workdir, "-n")
    assert result.returncode != 0
    assert f"backbones.video={missing}" in result.stdout


def test_resume_only_with_checkpoints_of_the_same_config(tmp_path):
    from weldfilm.runner import resume_allowed

    run_dir = tmp_path / "run"
    assert not resume_allowed(run_dir, "aaa")  # first start: nothing to resume
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"x")
    assert resume_allowed(run_dir, "aaa")  # killed and restarted: resume
    assert not resume_allowed(run_dir, "bbb")  # config changed: start afresh
    assert (run_dir / "checkpoints.stale" / "last.pt").is_file()
    assert not (run_dir / "checkpoints").exists()
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "audio_last.pt").write_bytes(b"x")  # late fusion: one per branch
    assert resume_allowed(run_dir, "bbb")


@pytest.mark.slow
def test_data_part_end_to_end(tmp_path):
    workdir = make_workdir(tmp_path, merge=TINY_DATA)
    card = "results/data/card/counts.csv"
    result = run_snakemake(workdir, "--cores", "2", card)
    assert result.returncode == 0, result.stdout[-3000:]
    data = workdir / "results" / "data"
    manifest = (data / "manifest.csv").read_text().splitlines()
    assert len(manifest) == 1 + 8 + 11  # header + good + one run per defect class
    assert json.loads((data / "validation.json").read_text())
    for name in ("counts.csv", "counts.md", "modalities.png"):
        assert (data / "card" / name).stat().st_size > 0
    assert (workdir / "results" / "logs" / "validate.log").is_file()

    # a broken run stops the workflow at validation, with the run named
    sensor_csv = next((data / "synthetic").rglob("*-03/*.csv"))
    sensor_csv.write_text("not,a,sensor,table\n")
    result = run_snakemake(workdir, "--cores", "2", "--forcerun", "validate", card)
    assert result.returncode != 0
    assert sensor_csv.parent.name in result.stdout
    assert not (data / "validation.json").exists()


@pytest.mark.slow
@pytest.mark.workflow
def test_full_default_workflow(tmp_path):
    """The CI's end-to-end test: the default config, every rule, into a temporary results folder, with
    networking disabled where the machine allows it (every model load must be local)."""
    workdir = make_workdir(tmp_path)
    offline = ("unshare", "-n") if network_can_be_disabled() else ()
    result = run_snakemake(workdir, "--cores", "2", timeout=1800, prefix=offline)
    assert result.returncode == 0, result.stdout[-5000:]
    results = workdir / "results"
    paper = results / "paper"
    expected = ([paper / TABLES_DIR / name for name in TABLES] + [paper / FIGURES_DIR / name for name in FIGURES]
                + [paper / name for name in PAPER_OUTPUTS])
    assert [str(path) for path in expected if not path.is_file()] == []
    cfg = load_config(workdir / "config.yaml")
    for protocol in cfg["protocols"]:
        for method in cfg["methods"]:
            for seed in cfg["seeds"]:
                metrics = json.loads((results / "runs" / protocol / method / f"seed{seed}" / "eval" / "test"
                                      / "metrics.json").read_text())
                assert 0.0 <= metrics["i_auroc"] <= 1.0 and not math.isnan(metrics["i_auroc"]), (protocol, method)


def network_can_be_disabled() -> bool:
    """True where `unshare -n` (a new, empty network namespace) works, e.g. as root on Linux."""
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


# synthetic data, tiny backbones and a tiny Causal-FiLM: one run of the method in about a minute
TINY_CAUSAL_FILM = {**TINY_DATA,
                    "preprocess": {"video_frames": 4, "frame_size": 32, "image_size": 64, "audio_mel_bins": 16,
                                   "audio_frames": 32, "sensor_length": 32},
                    "causal_film": {"d_model": 16, "sensor_hidden_dim": 8, "projector_hidden": 16},
                    "train": {"epochs": 1, "batch_size": 4, "device": "cpu"}}
CAUSAL_FILM_RUN = "results/runs/fair/causal_film/seed0"


# the train job of Causal-FiLM seed 0 with three runs on one cached TRAIN stream (trained in lockstep):
# fair, paper_faithful without its augmentation, and one ablation
LOCKSTEP_GROUP = {"merge": {"protocols": {"paper_faithful": {"train.use_augmentations": False}}},
                  "replace": {"ablations": {"no_film": {"causal_film.use_film": False}}}}


@pytest.mark.slow
def test_training_killed_mid_run_resumes_and_matches_an_uninterrupted_run(tmp_path):
    """SIGKILL of the whole workflow during training, then `--rerun-incomplete`: each run of the train job
    continues from its last.pt (epoch count continues) and its scores equal those of a run that was never killed."""
    import os
    import signal
    import time

    long_training = deep_merge(TINY_CAUSAL_FILM, {"train": {"epochs": 60, "early_stopping_patience": 0}})
    long_training = deep_merge(long_training, LOCKSTEP_GROUP["merge"])
    target = f"{CAUSAL_FILM_RUN}/eval/test/scores.csv"
    killed = make_workdir(tmp_path / "killed", merge=long_training, replace=LOCKSTEP_GROUP["replace"])
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--cores", "2", target]
    process = subprocess.Popen(command, cwd=killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    last = killed / CAUSAL_FILM_RUN / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 600
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the node dies: Snakemake and the training job at once
    process.wait()
    assert last.exists() and not (killed / CAUSAL_FILM_RUN / "metadata.json").exists(), "killed before training ended"

    assert run_snakemake(killed, "--unlock").returncode == 0
    rerun = run_snakemake(killed, "--cores", "2", "--rerun-incomplete", target)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    log = (killed / "results" / "logs" / "train" / "causal_film" / "seed0.log").read_text()
    assert "resume=True" in log and "3 runs trained in lockstep" in log
    runs = [CAUSAL_FILM_RUN, "results/runs/paper_faithful/causal_film/seed0", "results/ablations/no_film/seed0"]
    for run in runs:
        epochs = [json.loads(line)["epoch"] for line in (killed / run / "train_log.jsonl").open()]
        assert epochs == sorted(set(epochs)) and len(epochs) == 60, "each epoch logged once, the count continued"

    clean = make_workdir(tmp_path / "clean", merge=long_training, replace=LOCKSTEP_GROUP["replace"])
    assert run_snakemake(clean, "--cores", "2", target).returncode == 0
    for run in runs:
        scores = f"{run}/eval/test/scores.csv"
        assert (killed / scores).read_text() == (clean / scores).read_text(), run
