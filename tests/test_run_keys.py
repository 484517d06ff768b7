"""What shapes a run: a method's setting re-runs (and un-resumes) that method's runs only."""

from __future__ import annotations

import re

import pytest
import yaml

from weldfilm.config import METHODS, SCHEMA_PATH, deep_merge, load_config, prepare, run_config
from weldfilm.run_keys import METHOD_SECTIONS, NOT_READ_BY_RUNS, SHARED_SECTIONS, run_reads, run_shape_hash
from test_workflow import TINY_CAUSAL_FILM, make_workdir, run_snakemake


def hashes(cfg: dict) -> dict:
    runs = {method: run_config(cfg, method, 0) for method in METHODS}
    runs["ablation no_film"] = run_config(cfg, "causal_film", 0, "fair", "no_film")
    return {name: run_shape_hash(run) for name, run in runs.items()}


def changed(overrides: dict) -> set[str]:
    base = load_config()
    before, after = hashes(base), hashes(load_config(overrides=overrides))
    return {name for name in before if before[name] != after[name]}


def test_every_config_section_is_classified():
    sections = set(yaml.safe_load(SCHEMA_PATH.read_text())["properties"]) | {"run"}
    per_method = {path.partition(".")[0] for paths in METHOD_SECTIONS.values() for path in paths}
    assert sections == set(SHARED_SECTIONS) | per_method | set(NOT_READ_BY_RUNS)
    assert set(METHOD_SECTIONS) == set(METHODS)
    with pytest.raises(KeyError, match="no entry for method 'nope'"):
        run_reads("nope")


@pytest.mark.parametrize("overrides, expected", [
    ({"dinomaly.decoder_depth": 4}, {"dinomaly"}),
    ({"late_fusion.audio_epochs": 2}, {"late_fusion"}),
    ({"m3dm.f_coreset": 0.2}, {"m3dm"}),
    ({"causal_film.d_model": 32}, {"causal_film", "ablation no_film"}),
    ({"loss.lambda_gram": 0.5}, {"causal_film", "ablation no_film"}),
    ({"backbones.dinomaly_encoder": "elsewhere/dinov2_reg"}, {"dinomaly"}),
    # the tiny stand-ins' architecture (written into the same folders): every run that loads one
    ({"backbones.tiny_size": "paper_shapes"}, {"causal_film", "ablation no_film", "m3dm", "dinomaly"}),
    ({"train.epochs": 7}, set(METHODS) | {"ablation no_film"}),          # shared: every run
    ({"preprocess.num_angles": 4}, set(METHODS) | {"ablation no_film"}),
    ({"seeds": [0, 5], "workflow.eval_splits": ["test"], "paper.render_pdf": "never"}, set()),  # bookkeeping
    ({"ablations.no_film": {"causal_film.use_film": False, "loss.lambda_l1": 0.5}}, {"ablation no_film"}),
])
def test_a_setting_changes_the_hash_of_the_runs_that_read_it_only(overrides, expected):
    assert changed(overrides) == expected


def test_protocol_overrides_reach_the_methods_that_read_them():
    base = load_config()
    cfg = prepare(deep_merge(yaml.safe_load(SCHEMA_PATH.parent.parent.parent.joinpath("config.yaml").read_text()),
                             {"protocols": {"paper_faithful": {"m3dm.fusion_fit_scores": "leave_one_run_out"}}}))
    for method in METHODS:
        same = run_shape_hash(run_config(base, method, 0, "paper_faithful")) == \
            run_shape_hash(run_config(cfg, method, 0, "paper_faithful"))
        assert same == (method != "m3dm"), method


# --------------------------------------------------------------------------------- the workflow
TWO_METHODS = deep_merge(TINY_CAUSAL_FILM, {
    "seeds": [0], "methods": ["late_fusion", "dinomaly"],
    "late_fusion": {"audio_epochs": 1, "video_epochs": 1}, "dinomaly": {"epochs": 1},
    "workflow": {"eval_splits": ["test"]},
})
RUNS = {method: f"results/runs/fair/{method}/seed0/metadata.json" for method in ("late_fusion", "dinomaly")}


def planned_train_jobs(output: str) -> set[str]:
    """Methods of the train jobs (one per method and seed: rule train_<method>) a dry run would start."""
    return set(re.findall(r"^rule train_(\w+):$", output, re.MULTILINE))


@pytest.mark.slow
def test_changing_one_methods_setting_leaves_the_other_methods_runs_untouched(tmp_path):
    workdir = make_workdir(tmp_path, merge=TWO_METHODS)
    result = run_snakemake(workdir, "--cores", "2", *RUNS.values())
    assert result.returncode == 0, result.stdout[-4000:]
    result = run_snakemake(workdir, "-n", *RUNS.values())
    assert result.returncode == 0 and "Nothing to be done" in result.stdout, result.stdout[-3000:]

    make_workdir(tmp_path, merge=deep_merge(TWO_METHODS, {"dinomaly": {"decoder_depth": 4}}))
    result = run_snakemake(workdir, "-n", *RUNS.values())
    assert result.returncode == 0, result.stdout[-3000:]
    assert planned_train_jobs(result.stdout) == {"dinomaly"}, result.stdout[-3000:]
    assert "Params have changed" in result.stdout
    assert "results/backbones/tiny/dinov2_reg" in result.stdout and "tiny/dinov3" not in result.stdout  # own backbone only

    make_workdir(tmp_path, merge=deep_merge(TWO_METHODS, {"train": {"eval_batch_size": 8}}))  # shared
    result = run_snakemake(workdir, "-n", *RUNS.values())
    assert planned_train_jobs(result.stdout) == {"late_fusion", "dinomaly"}, result.stdout[-3000:]


def test_regenerated_synthetic_data_is_never_resumed_from_old_checkpoints():
    """The generator's settings reach a run as files (Snakemake re-runs the job, the rule's hash stays), but
    the job must then train afresh: the resume hash follows them (workers aside); on real data they do not enter."""
    from weldfilm.run_keys import run_resume_hash

    base = load_config()
    run = run_config(base, "m3dm", 0)
    regenerated = run_config(load_config(overrides={"synthetic.defect_strength": 2.0}), "m3dm", 0)
    assert run_shape_hash(regenerated) == run_shape_hash(run)
    assert run_resume_hash(regenerated) != run_resume_hash(run)
    assert run_resume_hash(run_config(load_config(overrides={"synthetic.workers": 3}), "m3dm", 0)) == run_resume_hash(run)
    real = run_config(load_config(overrides={"data.source": "real"}), "m3dm", 0)
    real_other_generator = run_config(load_config(overrides={"data.source": "real", "synthetic.defect_strength": 2.0}),
                                      "m3dm", 0)
    assert run_resume_hash(real_other_generator) == run_resume_hash(real)


def test_a_scoring_setting_reruns_the_job_but_resumes_its_finished_runs():
    """evaluation.* changes the rule's hash (the scores change) but not the resume hash: the re-run job
    re-scores its finished runs instead of training them again."""
    from weldfilm.run_keys import run_resume_hash

    run = run_config(load_config(), "dinomaly", 0)
    rescored = run_config(load_config(overrides={"evaluation.bootstrap": 200}), "dinomaly", 0)
    assert run_shape_hash(rescored) != run_shape_hash(run) and run_resume_hash(rescored) == run_resume_hash(run)
    retrained = run_config(load_config(overrides={"train.lr": 1.0e-4}), "dinomaly", 0)
    assert run_resume_hash(retrained) != run_resume_hash(run)


def test_weights_or_a_manifest_replaced_under_the_same_path_are_never_resumed_from(tmp_path, monkeypatch):
    """Backbone weights, M3DM's point-transformer checkpoint and the manifest reach a run as files under
    unchanged names: the resume hash follows their content (not their modification time), and only the
    files the run's method loads."""
    from weldfilm.run_keys import run_input_files, run_resume_hash

    monkeypatch.chdir(tmp_path)
    for name in ("dinov2_reg", "dino_vitb8"):
        (tmp_path / "bb" / name).mkdir(parents=True)
        (tmp_path / "bb" / name / "model.safetensors").write_bytes(b"weights v1")
    (tmp_path / "point.pth").write_bytes(b"point v1")
    manifest = tmp_path / "results" / "data" / "manifest.csv"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("SUBDIRS,SPLIT\na,TRAIN\n")
    cfg = load_config(overrides={"results": str(tmp_path / "results"), "backbones.dinomaly_encoder": "bb/dinov2_reg",
                                 "backbones.m3dm_rgb": "bb/dino_vitb8", "m3dm.point_mae_checkpoint": "point.pth"})
    dinomaly, m3dm = run_config(cfg, "dinomaly", 0), run_config(cfg, "m3dm", 0)
    assert set(run_input_files(dinomaly)) == {"backbones.dinomaly_encoder", "manifest"}
    assert set(run_input_files(m3dm)) == {"backbones.m3dm_rgb", "m3dm.point_mae_checkpoint", "manifest"}
    before = {"dinomaly": run_resume_hash(dinomaly), "m3dm": run_resume_hash(m3dm)}
    (tmp_path / "bb" / "dinov2_reg" / "model.safetensors").write_bytes(b"weights v2")  # Dinomaly's weights replaced
    assert run_resume_hash(dinomaly) != before["dinomaly"] and run_resume_hash(m3dm) == before["m3dm"]
    before = {"dinomaly": run_resume_hash(dinomaly), "m3dm": run_resume_hash(m3dm)}
    (tmp_path / "point.pth").write_bytes(b"point v2")
    assert run_resume_hash(m3dm) != before["m3dm"] and run_resume_hash(dinomaly) == before["dinomaly"]
    before = {"dinomaly": run_resume_hash(dinomaly), "m3dm": run_resume_hash(m3dm)}
    manifest.write_text("SUBDIRS,SPLIT\na,VAL\n")  # another split
    assert run_resume_hash(dinomaly) != before["dinomaly"] and run_resume_hash(m3dm) != before["m3dm"]
    manifest.touch()  # rewritten with the same content: still resumable
    assert run_resume_hash(dinomaly) == run_resume_hash(run_config(cfg, "dinomaly", 0))
