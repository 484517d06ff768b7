"""WeldingDataset: data contract, normalisation, STFT mode, modalities, augmentation, config, card."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from weldfilm.config import SCHEMA_PATH
from weldfilm.data import augment
from weldfilm.data.card import write_dataset_card
from weldfilm.data.dataset import WeldingDataset, collate_batch, dataset_from_config
from weldfilm.data.manifest import build_manifest
from weldfilm.errors import ConfigError, DataError

SIZES = dict(video_frames=4, frame_size=16, image_size=24, num_angles=6, audio_mel_bins=16, audio_frames=32,
             sensor_length=20, sensor_channels=7)


@pytest.fixture(scope="module")
def manifest(tiny_data_root, tmp_path_factory):
    return build_manifest(tiny_data_root, tmp_path_factory.mktemp("manifest") / "manifest.csv", seed=0)


def test_sample_follows_the_data_contract(manifest, tiny_data_root):
    dataset = WeldingDataset(manifest, tiny_data_root, "Val", **SIZES)
    assert len(dataset) == (manifest.SPLIT == "VAL").sum()
    item = dataset[0]
    shapes = {"video": (4, 3, 16, 16), "post_weld_images": (6, 3, 24, 24), "audio": (1, 16, 32), "sensor": (20, 7)}
    for key, shape in shapes.items():
        assert item[key].shape == shape and item[key].dtype == torch.float32, key
    for key in ("video", "post_weld_images"):
        assert 0.0 <= item[key].min() and item[key].max() <= 1.0 and item[key].max() > 0.05
    assert item["num_images"] == 5 and not item["post_weld_images"][5:].any()  # 5 photos, padded to 6
    sensor = item["sensor"][:, :6]
    assert torch.allclose(sensor.mean(0), torch.zeros(6), atol=1e-4)
    assert torch.allclose(sensor.std(0, unbiased=False), torch.ones(6), atol=1e-3)
    assert not item["sensor"][:, 6].any()  # padded channel
    assert torch.isfinite(item["audio"]).all() and item["audio"].std() > 0
    row = manifest[manifest.SUBDIRS == item["sample_id"]].iloc[0]
    assert row.SPLIT == "VAL" and item["class_label"] == int(row.CLASS_CODE)
    assert item["label"] == int(item["class_label"] != 0)


def test_stft_mode_and_modalities_subset(manifest, tiny_data_root):
    dataset = WeldingDataset(manifest, tiny_data_root, "test", modalities=["audio"], audio_type="stft",
                             audio_sr=192000, n_fft=256, hop_length=128, audio_frames=40)
    item = dataset[0]
    assert set(item) == {"audio", "label", "class_label", "sample_id"}
    assert item["audio"].shape == (1, 129, 40) and item["audio"].min() >= 0
    images_only = WeldingDataset(manifest, tiny_data_root, "test", modalities=("post_weld_images",), image_size=8)[0]
    assert set(images_only) == {"post_weld_images", "num_images", "label", "class_label", "sample_id"}
    with pytest.raises(ConfigError, match="unknown modalities"):
        WeldingDataset(manifest, tiny_data_root, "test", modalities=["depth"])


def test_collate_batch(manifest, tiny_data_root):
    dataset = WeldingDataset(manifest, tiny_data_root, "train", modalities=["sensor"], sensor_length=8)
    batch = collate_batch([dataset[0], dataset[1]])
    assert batch["sensor"].shape == (2, 8, 6) and batch["label"].tolist() == [0, 0]
    assert batch["sample_id"] == dataset.sample_ids[:2]


def test_augmentation_is_seeded_and_changes_the_sample(manifest, tiny_data_root):
    kwargs = dict(SIZES, num_angles=5)
    plain = WeldingDataset(manifest, tiny_data_root, "train", **kwargs)[1]
    first = WeldingDataset(manifest, tiny_data_root, "train", augment=True, seed=7, **kwargs)
    again = WeldingDataset(manifest, tiny_data_root, "train", augment=True, seed=7, **kwargs)
    other = WeldingDataset(manifest, tiny_data_root, "train", augment=True, seed=8, **kwargs)
    a, b, c = first[1], again[1], other[1]
    for key in ("video", "post_weld_images", "audio", "sensor"):
        assert torch.equal(a[key], b[key]), key
        assert not torch.equal(a[key], plain[key]), key
        assert not torch.equal(a[key], c[key]), key
        assert a[key].shape == plain[key].shape and a[key].dtype == torch.float32
    assert 0.0 <= a["video"].min() and a["video"].max() <= 1.0
    first.set_epoch(1)
    assert not torch.equal(first[1]["sensor"], a["sensor"])
    with pytest.raises(ConfigError, match="only for the TRAIN split"):
        WeldingDataset(manifest, tiny_data_root, "val", augment=True)


def test_image_augmentation_leaves_padding_and_keeps_range():
    rng = np.random.default_rng(0)
    images = np.zeros((4, 3, 32, 32), dtype=np.float32)
    images[:2] = rng.random((2, 3, 32, 32))
    out = augment.augment_images(np.random.default_rng(1), images, augment.DEFAULT_AUGMENT["images"], num_real=2)
    assert not out[2:].any() and out.min() >= 0 and out.max() <= 1 and not np.array_equal(out[:2], images[:2])
    spec = rng.normal(size=(1, 16, 40)).astype(np.float32)
    params = dict(augment.DEFAULT_AUGMENT["audio"], noise_std=0.0, time_mask_max=40, freq_mask_max=16)
    masked = augment.augment_audio(np.random.default_rng(3), spec, params)
    assert (masked == spec.min()).sum() > 0


def test_default_augment_matches_schema():
    schema = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]["augment"]["properties"]
    from_schema = {name: {key: spec["default"] for key, spec in block["properties"].items()}
                   for name, block in schema.items()}
    assert from_schema == augment.DEFAULT_AUGMENT


def test_missing_run_and_bad_split(manifest, tiny_data_root, tmp_path):
    broken = pd.concat([manifest, manifest.iloc[[0]].assign(SUBDIRS="cfg/11-18-22-0999-01", SPLIT="TEST")])
    with pytest.raises(DataError, match="cfg/11-18-22-0999-01"):
        WeldingDataset(broken, tiny_data_root, "test")
    assert len(WeldingDataset(broken, tiny_data_root, "test", exclude_runs=["cfg/11-18-22-0999-01"])) == \
        (manifest.SPLIT == "TEST").sum()
    with pytest.raises(ConfigError, match="split must be one of"):
        WeldingDataset(manifest, tiny_data_root, "holdout")


def test_dataset_from_config(tiny_config, tiny_data_root):
    build_manifest(tiny_data_root, f"{tiny_config['results']}/data/manifest.csv")  # the default location
    dataset = dataset_from_config(tiny_config, "train", modalities=["audio"], audio_type="stft", n_fft=64,
                                  hop_length=32)
    assert not dataset.augment and dataset.sizes["audio_frames"] == tiny_config["preprocess"]["audio_frames"]
    assert dataset[0]["audio"].shape == (1, 33, tiny_config["preprocess"]["audio_frames"])
    tiny_config["train"]["use_augmentations"] = True
    assert dataset_from_config(tiny_config, "train").augment
    assert not dataset_from_config(tiny_config, "val").augment
    with pytest.raises(ConfigError, match="unknown override"):
        dataset_from_config(tiny_config, "val", frames=3)


def test_dataset_card(manifest, tiny_data_root, tmp_path):
    manifest_csv = tmp_path / "manifest.csv"
    manifest.to_csv(manifest_csv, index=False)
    result = write_dataset_card(manifest_csv, tiny_data_root, tmp_path / "card", SIZES)
    counts = pd.read_csv(tmp_path / "card" / "counts.csv", dtype={"code": str}).set_index("code")
    assert list(counts.columns) == ["class", "TRAIN", "VAL", "TEST", "total"] and len(counts) == 13
    assert counts.loc["all", "total"] == len(manifest) and counts.loc["00", "TRAIN"] == (manifest.SPLIT == "TRAIN").sum()
    assert result["counts"]["all"]["total"] == len(manifest)
    assert "| 11 | crater_cracks |" in (tmp_path / "card" / "counts.md").read_text()
    png = (tmp_path / "card" / "modalities.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
