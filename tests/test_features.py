"""Feature cache: what it stores, stale/corrupt caches, and cached == recomputed scores."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from training_helpers import ready_config

from weldfilm.methods.causal_film.method import CausalFiLMMethod
from weldfilm.errors import CheckpointError
from weldfilm.features import (FeatureDataset, build_feature_cache, cache_file, cache_key, feature_dir_key,
                               feature_loader, sidecar_of)


@pytest.fixture
def cfg(tiny_config, tmp_path_factory, tiny_data_root):
    return ready_config(tiny_config, tmp_path_factory, tiny_data_root, epochs=2, use_ema=False)


def test_cache_holds_the_extracted_feature_batch(cfg, tmp_path):
    from weldfilm.data.dataset import collate_batch, dataset_from_config
    from weldfilm.models.backbones import FrozenBackbones

    path = build_feature_cache(cfg, "val", tmp_path / "val.safetensors", device="cpu")
    data = FeatureDataset(path, cache_key(cfg))
    meta = json.loads(sidecar_of(path).read_text())
    raw = dataset_from_config(cfg, "val", augment=False)
    assert data.sample_ids == raw.sample_ids and meta["split"] == "val"
    assert set(meta["fields"]) >= {"video_tokens", "audio_tokens", "image_tokens", "sensor", "label", "num_images"}
    assert meta["text"]["available"] and data.text_embedding is not None
    direct = FrozenBackbones.from_config(cfg, "cpu").extract(collate_batch([raw[0], raw[1]]))
    served = data[[0, 1]]
    for name in ("video_tokens", "audio_tokens", "image_tokens", "sensor"):
        assert torch.allclose(served[name], direct[name], atol=1e-6), name
    assert served["sample_id"] == direct["sample_id"]
    batches = list(feature_loader(torch.utils.data.Subset(data, [2, 0]), batch_size=1, shuffle=False))
    assert [b["sample_id"][0] for b in batches] == [data.sample_ids[2], data.sample_ids[0]]


def test_stale_and_corrupt_caches_are_refused(cfg, tmp_path):
    path = build_feature_cache(cfg, "val", tmp_path / "val.safetensors", device="cpu")
    with pytest.raises(CheckpointError, match="stale"):
        FeatureDataset(path, "another-key")
    path.write_bytes(path.read_bytes()[:64])
    with pytest.raises(CheckpointError, match="corrupt"):
        FeatureDataset(path, None)
    with pytest.raises(CheckpointError, match="does not exist"):
        FeatureDataset(tmp_path / "test.safetensors", None)


def test_keys_follow_config_and_backbone_content(cfg, tmp_path):
    changed = {**cfg, "causal_film": {**cfg["causal_film"], "result_layers": [0, 2]}}
    assert feature_dir_key(changed) != feature_dir_key(cfg)
    assert feature_dir_key({**cfg, "train": {**cfg["train"], "lr": 0.5}}) == feature_dir_key(cfg)  # not a feature input
    copy = tmp_path / "clip"
    shutil.copytree(cfg["backbones"]["clip"], copy)
    moved = {**cfg, "backbones": {**cfg["backbones"], "clip": str(copy)}}
    before = cache_key(moved)
    (copy / "config.json").write_text((copy / "config.json").read_text() + "\n")  # same path, new content
    assert cache_key(moved) != before


@pytest.mark.slow
def test_cached_and_recomputed_features_give_the_same_scores(cfg):
    method = CausalFiLMMethod(cfg, cfg["results"] + "/run", torch.device("cpu"))
    method.fit()
    cached = method.score("val")
    assert method.feature_source["val"].startswith("cache")
    assert cache_file(method.feature_dir, "val").is_file()
    on_the_fly = CausalFiLMMethod({**cfg, "train": {**cfg["train"], "feature_cache": False}}, cfg["results"] + "/run",
                                  torch.device("cpu"))
    recomputed = on_the_fly.score("val")
    assert on_the_fly.feature_source["val"] == "backbones on the fly"
    assert cached["sample_id"].tolist() == recomputed["sample_id"].tolist()
    assert np.max(np.abs(cached["score"].to_numpy() - recomputed["score"].to_numpy())) < 1e-5


def test_cache_file_is_safetensors_read_memory_mapped(cfg, tmp_path):
    from safetensors import safe_open

    half = {**cfg, "train": {**cfg["train"], "feature_cache_dtype": "fp16"}}
    path = build_feature_cache(half, "val", tmp_path / "val.safetensors", device="cpu")
    data = FeatureDataset(path, cache_key(half))
    assert isinstance(data.tensors["video_tokens"], np.memmap)  # served from the file, not loaded whole
    with safe_open(str(path), framework="pt") as handle:  # the standard reader accepts the streamed layout
        assert handle.metadata()["key"] == cache_key(half)
        stored = {name: handle.get_tensor(name) for name in handle.keys()}
    assert stored["video_tokens"].dtype == torch.float16 and stored["label"].dtype == torch.int64
    assert torch.equal(stored["__text_embedding__"], data.text_embedding)
    served = data[[1, 0]]
    assert served["video_tokens"].dtype == torch.float32
    assert torch.equal(served["video_tokens"], stored["video_tokens"][[1, 0]].float())
    assert torch.equal(served["label"], stored["label"][[1, 0]])
    full = FeatureDataset(build_feature_cache(cfg, "val", tmp_path / "full.safetensors", device="cpu"), None)
    assert torch.allclose(served["video_tokens"], full[[1, 0]]["video_tokens"], atol=1e-2)


def test_train_cache_only_where_a_run_reads_it(cfg):
    from weldfilm.paths import cached_splits

    augmented = {**cfg, "train": {**cfg["train"], "use_augmentations": True}}
    assert cached_splits(cfg) == ("train", "val", "test")
    assert cached_splits(augmented) == ("val", "test")  # backbones run live on augmented TRAIN inputs
    assert cached_splits({**cfg, "train": {**cfg["train"], "feature_cache": False}}) == ()
    for config in (cfg, augmented):
        method = CausalFiLMMethod(config, cfg["results"] + "/run_splits", torch.device("cpu"))
        assert [s for s in ("train", "val", "test") if method.uses_cache(s)] == list(cached_splits(config))


def test_precision_is_fp32_on_the_cpu_whatever_the_config(cfg):
    from weldfilm.models.backbones import FrozenBackbones
    from weldfilm.training.precision import backbone_autocast, precision_record

    wanted = {**cfg["train"], "backbone_precision": "bf16", "allow_tf32": True, "mixed_precision": True,
              "amp_dtype": "bf16"}
    record = precision_record("cpu", wanted)
    assert (record["backbones"], record["heads"], record["tf32"]) == ("fp32", "fp32", False)
    assert "CUDA only" in record["note"] and record["configured"]["backbone_precision"] == "bf16"
    assert precision_record("cuda", wanted)["backbones"] == "bf16"
    assert not isinstance(backbone_autocast("cpu", wanted), torch.autocast)
    backbones = FrozenBackbones.from_config({**cfg, "train": wanted}, "cpu")
    reference = FrozenBackbones.from_config(cfg, "cpu")
    audio = torch.rand(2, 1, cfg["preprocess"]["audio_mel_bins"], cfg["preprocess"]["audio_frames"])
    assert torch.equal(backbones.audio_tokens(audio), reference.audio_tokens(audio))
    bf16 = {**cfg, "train": wanted}
    assert feature_dir_key(bf16) != feature_dir_key(cfg)  # bf16 features never mix with fp32 ones


def test_a_rebuild_killed_before_its_sidecar_is_written_is_rebuilt_not_refused(cfg, tmp_path, monkeypatch):
    """The data file moves into place first, its sidecar last: a kill in between leaves the old sidecar,
    which the new key does not match (rebuilt), never the new key over old data (accepted, then refused)."""
    import os

    import weldfilm.io
    from weldfilm.features import cache_is_current

    path = build_feature_cache(cfg, "val", tmp_path / "val.safetensors", device="cpu")
    other = {**cfg, "loss": {**cfg["loss"], "text_prompt": "another prompt"}}
    replace = os.replace

    def killed_at_the_data_file(src, dst):
        if str(dst) == str(path):
            raise KeyboardInterrupt("killed")
        replace(src, dst)

    monkeypatch.setattr(weldfilm.io.os, "replace", killed_at_the_data_file)
    with pytest.raises(KeyboardInterrupt):
        build_feature_cache(other, "val", path, device="cpu")
    assert not cache_is_current(path, cache_key(other))  # the workflow / method rebuilds it
    monkeypatch.undo()
    build_feature_cache(other, "val", path, device="cpu")
    assert cache_is_current(path, cache_key(other)) and FeatureDataset(path, cache_key(other)).sample_ids
