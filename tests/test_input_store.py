"""Decoded-input store (weldfilm/data/store.py): bit-identical to decoding, never read when stale, bad files
stop the build with the reader's DataError, the workflow plans one `inputs` job per kind (every split)."""

from __future__ import annotations

import copy
import json
import os
import shutil

import numpy as np
import pytest
import torch

from weldfilm.config import run_config
from weldfilm.data import store
from weldfilm.data.dataset import dataset_from_config
from weldfilm.errors import DataError
from weldfilm.training.loaders import make_loader

MODALITIES = ("video", "post_weld_images", "audio", "sensor")


@pytest.fixture
def cfg(tiny_config):
    from weldfilm.data.manifest import build_manifest

    results = tiny_config["results"]
    build_manifest(tiny_config["data"]["root"], f"{results}/data/manifest.csv", seed=0)
    return tiny_config


def build(cfg, split, arguments, threads=1):
    """Build every kind of ``arguments`` (a method's dataset arguments) for ``split``; the specs."""
    specs = []
    for modality in arguments["modalities"]:
        spec = store.kind_spec(cfg, modality, store.resolved_sizes(cfg, arguments))
        store.build_input_kind(cfg, spec, split, store.store_file(cfg["results"], store.kind_name(spec), split), threads)
        specs.append(spec)
    return specs


def items(dataset):
    return [dataset[i] for i in range(len(dataset))]


def assert_bit_identical(stored: list[dict], decoded: list[dict]):
    assert len(stored) == len(decoded)
    for a, b in zip(stored, decoded):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
                assert a[key].numpy().tobytes() == b[key].numpy().tobytes(), key
            else:
                assert a[key] == b[key], key


# one dataset argument set per method (what each method opens its splits with)
def method_arguments(cfg):
    return {"causal_film": {"modalities": MODALITIES},
            "late_fusion_audio": store.late_fusion_arguments(cfg, "audio"),
            "late_fusion_video": store.late_fusion_arguments(cfg, "video"),
            "m3dm": store.m3dm_arguments(cfg),
            "dinomaly": store.dinomaly_arguments(cfg)}


@pytest.mark.parametrize("method", ["causal_film", "late_fusion_audio", "late_fusion_video", "m3dm", "dinomaly"])
def test_store_reads_are_bit_identical_to_decoding(cfg, method):
    arguments = method_arguments(cfg)[method]
    build(cfg, "val", arguments)
    sizes = {k: v for k, v in arguments.items() if k != "modalities"}
    stored = dataset_from_config(cfg, "val", modalities=arguments["modalities"], **sizes)
    decoded = dataset_from_config(cfg, "val", modalities=arguments["modalities"], store=False, **sizes)
    assert set(stored.store) == set(arguments["modalities"]) and not decoded.store
    assert_bit_identical(items(stored), items(decoded))


def test_augmented_train_from_the_store_is_bit_identical(cfg):
    cfg = copy.deepcopy(cfg)
    cfg["train"]["use_augmentations"] = True
    build(cfg, "train", {"modalities": MODALITIES})
    stored = dataset_from_config(cfg, "train", modalities=MODALITIES)
    decoded = dataset_from_config(cfg, "train", modalities=MODALITIES, store=False)
    assert stored.augment and set(stored.store) == set(MODALITIES)
    for epoch in (0, 3):
        stored.set_epoch(epoch)
        decoded.set_epoch(epoch)
        assert_bit_identical(items(stored), items(decoded))


def test_a_stale_or_foreign_store_is_never_read(cfg, caplog):
    (spec,) = build(cfg, "test", {"modalities": ("sensor",)})
    path = store.store_file(cfg["results"], store.kind_name(spec), "test")
    assert dataset_from_config(cfg, "test", modalities=("sensor",)).store
    os.utime(path, (1_700_000_000, 1_700_000_000))  # Snakemake sets its outputs' mtimes after a job: still current
    assert dataset_from_config(cfg, "test", modalities=("sensor",)).store
    sidecar = store.sidecar_file(path)
    original = json.loads(sidecar.read_text())

    # other runs (the manifest changed): decoded, and said in the log
    sidecar.write_text(json.dumps({**original, "sample_ids": original["sample_ids"][::-1]}))
    with caplog.at_level("WARNING"):
        assert not dataset_from_config(cfg, "test", modalities=("sensor",)).store
    assert "stale" in caplog.text and "runs are not the split's runs" in caplog.text
    # another key (e.g. the data it came from changed)
    sidecar.write_text(json.dumps({**original, "key": "0" * 20}))
    assert not dataset_from_config(cfg, "test", modalities=("sensor",)).store
    # a data file that is not the one the sidecar describes (a rebuild killed before its sidecar)
    sidecar.write_text(json.dumps(original))
    np.save(path, np.zeros((len(original["sample_ids"]), 32, 6), dtype=np.float32))
    assert not dataset_from_config(cfg, "test", modalities=("sensor",)).store
    # other data settings: another kind name, so the file is not even looked at
    other = copy.deepcopy(cfg)
    other["synthetic"]["seed"] = 1
    assert store.kind_name(store.kind_spec(other, "sensor", store.resolved_sizes(other, {}))) != store.kind_name(spec)
    assert not dataset_from_config(other, "test", modalities=("sensor",)).store
    # the store switched off: nothing is read
    sidecar.write_text(json.dumps(original))
    store.build_input_kind(cfg, spec, "test", path)
    assert dataset_from_config(cfg, "test", modalities=("sensor",)).store
    assert not dataset_from_config({**cfg, "inputs": {"store": False}}, "test", modalities=("sensor",)).store


@pytest.mark.parametrize("threads", [1, 2])
def test_a_corrupt_file_stops_the_build_with_the_run_and_file(cfg, tmp_path, threads):
    root = tmp_path / "data"
    shutil.copytree(cfg["data"]["root"], root)
    dataset = dataset_from_config(cfg, "val", modalities=("video",))
    run = dataset.runs[1]
    avi = run.files(root)["avi"]
    avi.write_bytes(b"not a video at all" * 10)
    broken = copy.deepcopy(cfg)
    broken["data"]["root"] = str(root)
    spec = store.kind_spec(broken, "video", store.resolved_sizes(broken, {}))
    out = store.store_file(broken["results"], store.kind_name(spec), "val")
    with pytest.raises(DataError) as info:
        store.build_input_kind(broken, spec, "val", out, threads=threads)
    message = str(info.value)
    assert run.subdir in message and str(avi) in message and "Traceback" not in message
    assert not out.exists() and not store.sidecar_file(out).exists()


def test_dataloader_workers_read_the_store(cfg):
    build(cfg, "val", {"modalities": MODALITIES}, threads=2)
    stored = dataset_from_config(cfg, "val", modalities=MODALITIES)
    decoded = dataset_from_config(cfg, "val", modalities=MODALITIES, store=False)
    for workers in (0, 2):
        batches = list(make_loader(stored, 3, shuffle=False, num_workers=workers))
        expected = list(make_loader(decoded, 3, shuffle=False, num_workers=0))
        for a, b in zip(batches, expected):
            for key in MODALITIES:
                assert torch.equal(a[key], b[key]), (workers, key)


def test_num_workers_auto_is_the_jobs_threads_minus_one(monkeypatch):
    from weldfilm.training.loaders import resolve_num_workers

    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert resolve_num_workers("auto") == 7 and resolve_num_workers(3) == 3
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert resolve_num_workers("auto") == 0


def test_each_run_reads_what_its_method_opens(cfg):
    """run_input_kinds follows the methods' own dataset arguments: Causal-FiLM reads its augmented TRAIN
    directly and the rest through the feature cache; the baselines every split."""
    names = lambda kinds: {s: sorted(store.kind_name(k) for k in v) for s, v in kinds.items()}  # noqa: E731
    fair = run_config(cfg, "causal_film", 0, "fair")
    faithful = run_config(cfg, "causal_film", 0, "paper_faithful")
    assert store.run_input_kinds(fair) == {} and set(store.feature_input_kinds(fair)) == {"train", "val", "test"}
    assert set(store.run_input_kinds(faithful)) == {"train"} and set(store.feature_input_kinds(faithful)) == {"val", "test"}
    assert len(store.run_input_kinds(faithful)["train"]) == 4
    late = names(store.run_input_kinds(run_config(cfg, "late_fusion", 0, "fair")))
    assert set(late) == {"train", "val", "test"} and [n.split("_")[0] for n in late["train"]] == ["stft", "video"]
    from weldfilm.methods.dinomaly.method import DinomalyMethod
    from weldfilm.methods.late_fusion.method import LateFusionMethod
    from weldfilm.methods.m3dm.method import M3DMMethod

    for cls, method in ((DinomalyMethod, "dinomaly"), (M3DMMethod, "m3dm")):
        run = run_config(cfg, method, 0, "fair")
        assert [cls.input_overrides(type("M", (), {"cfg": run, "params": run.get(method), "modalities": cls.modalities,
                                                   "section": run.get(method)})())] == store.method_dataset_arguments(run)
    run = run_config(cfg, "late_fusion", 0, "fair")
    holder = type("M", (), {"cfg": run, "section": run["late_fusion"]})()
    assert [LateFusionMethod.input_overrides(holder, b) for b in ("audio", "video")] == store.method_dataset_arguments(run)
    assert store.store_enabled(cfg) and store.run_input_kinds({**run, "inputs": {"store": False}}) == {}


def planned_inputs(output: str) -> set[tuple[str, str]]:
    """(kind, split) of every store file the `inputs` jobs of a dry run would write (one job per kind)."""
    import re

    files = set()
    for block in output.split("rule inputs:")[1:]:
        outputs = re.search(r"output: (.*)", block).group(1)
        kinds = set(re.findall(r"inputs/([^/]+)/\w+\.npy", outputs))
        assert len(kinds) == 1, outputs  # one kind per job
        files |= set(re.findall(r"inputs/([^/]+)/(\w+)\.npy", outputs))
    return files


@pytest.mark.slow
def test_the_workflow_builds_each_kind_once_and_a_preprocessing_change_adds_only_its_kind(tmp_path, monkeypatch):
    """A real run of the `inputs` jobs on tiny data (results below tmp_path): every method's datasets then
    read the store (Snakemake resets its outputs' mtimes: the files must stay current); dry runs: nothing
    left to do; Dinomaly's resize changed -> the job of its new photo kind (three splits) and nothing else; the
    train jobs list their runs' store files as inputs."""
    from test_workflow import TINY_DATA, make_workdir, run_snakemake

    from weldfilm.config import deep_merge

    workdir = make_workdir(tmp_path, merge=TINY_DATA)
    result = run_snakemake(workdir, "-n", "--until", "inputs")
    assert result.returncode == 0, result.stdout[-3000:]
    planned = planned_inputs(result.stdout)
    labels = {kind.split("-")[0] for kind, _ in planned}
    assert {split for _, split in planned} == {"train", "val", "test"} and len(planned) == 3 * len(labels)
    assert {"video_8x64", "photos_5x224", "sensor_64x6", "photos_1x160", "photos_5x64"} <= labels
    assert any(label.startswith("mel_") for label in labels) and any(label.startswith("stft_") for label in labels)
    assert "gpu=" not in result.stdout.split("rule inputs:")[1].split("rule ")[0]  # a CPU job

    result = run_snakemake(workdir, "--cores", "2", "--until", "inputs")
    assert result.returncode == 0, result.stdout[-4000:]
    assert planned_inputs(run_snakemake(workdir, "-n", "--until", "inputs").stdout) == set()
    from weldfilm.config import load_config

    monkeypatch.chdir(workdir)
    built = load_config(workdir / "config.yaml")
    for method in ("causal_film", "late_fusion", "m3dm", "dinomaly"):
        run = run_config(built, method, 0, "fair")
        for arguments in store.method_dataset_arguments(run):
            sizes = {k: v for k, v in arguments.items() if k != "modalities"}
            for split in ("train", "val", "test"):
                dataset = dataset_from_config(run, split, modalities=arguments["modalities"], **sizes)
                assert set(dataset.store) == set(arguments["modalities"]), (method, split)

    make_workdir(tmp_path, merge=deep_merge(TINY_DATA, {"dinomaly": {"resize": 48}}))
    result = run_snakemake(workdir, "-n", "--until", "inputs")
    assert result.returncode == 0, result.stdout[-3000:]
    new = planned_inputs(result.stdout)
    assert {kind.split("-")[0] for kind, _ in new} == {"photos_5x48"} and len(new) == 3, result.stdout[-3000:]
    result = run_snakemake(workdir, "-n", "--until", "train_dinomaly", "train_late_fusion")
    assert "inputs/photos_5x48-" in result.stdout and "inputs/stft_" in result.stdout


def test_the_feature_cache_built_from_the_store_equals_the_one_built_from_the_files(tiny_config, tmp_path_factory,
                                                                                   tiny_data_root, tmp_path):
    """Causal-FiLM's feature-cache build reads the store (dataset_from_config attaches it): same bytes."""
    from training_helpers import ready_config

    from weldfilm.features import build_feature_cache

    run = ready_config(tiny_config, tmp_path_factory, tiny_data_root)
    decoded = build_feature_cache({**run, "inputs": {"store": False}}, "val", tmp_path / "decoded" / "val.safetensors")
    for split, specs in store.feature_input_kinds(run).items():
        if split == "val":
            for spec in specs:
                store.build_input_kind(run, spec, split, store.store_file(run["results"], store.kind_name(spec), split))
    assert set(dataset_from_config(run, "val", modalities=MODALITIES).store) == set(MODALITIES)
    stored = build_feature_cache(run, "val", tmp_path / "stored" / "val.safetensors")
    assert stored.read_bytes() == decoded.read_bytes()


def test_a_one_thread_build_imports_no_torch(cfg, tmp_path):
    """Rule inputs runs with one thread locally: it decodes in-process and pays no torch import."""
    import subprocess
    import sys

    spec = store.kind_spec(cfg, "sensor", store.resolved_sizes(cfg, {}))
    out = tmp_path / "sensor.npy"
    (tmp_path / "args.json").write_text(json.dumps({"cfg": cfg, "spec": spec, "out": str(out)}, default=str))
    code = ("import json, sys; from weldfilm.data.store import build_input_kind; "
            f"a = json.load(open({str(tmp_path / 'args.json')!r})); build_input_kind(a['cfg'], a['spec'], 'val', a['out']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = tmp_path / "expected.npy"
    store.build_input_kind(cfg, spec, "val", expected, threads=2)
    assert out.read_bytes() == expected.read_bytes()
