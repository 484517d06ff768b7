"""Shared pytest fixtures: a tiny synthetic dataset (made once per session) and a tiny validated config.

``tiny_data_root``: a data root in the real on-disk layout with every class (8 good runs + 2 runs of
each of the 11 defects, 1 s each, 64 px video frames, 128 px photos, 192 kHz audio). Treat it as
read-only: it is shared by every test of the session.

``tiny_config``: a validated config (``weldfilm.config.prepare``) built from the project's
``config.yaml`` (so protocols and ablations are the real ones) with ``data.root`` = ``tiny_data_root``,
``results`` and every backbone path below a per-test temporary folder, and tiny model/input sizes.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from weldfilm.config import DEFAULT_CONFIG, deep_merge, prepare


TINY_SYNTHETIC = {
    "seed": 0,
    "good_runs": 8,
    "runs_per_class": 2,
    "duration_s": 1.0,
    "video_size": 64,
    "image_size": 128,
    "workers": 1,
}

TINY_PREPROCESS = {
    "video_frames": 4,
    "frame_size": 32,
    "image_size": 64,
    "num_angles": 5,
    "audio_mel_bins": 16,
    "audio_frames": 32,
    "sensor_length": 32,
}


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory):
    """Path of a tiny synthetic dataset (all 12 classes) shared by the whole test session."""
    from weldfilm.data.synthetic import generate

    root = tmp_path_factory.mktemp("tiny_data") / "synthetic"
    generate(root, **TINY_SYNTHETIC)
    return root


@pytest.fixture
def tiny_config(tmp_path, tiny_data_root):
    """A validated config dict with tiny sizes; outputs go below ``tmp_path / 'results'``."""
    results = tmp_path / "results"
    tiny_backbones = results / "backbones" / "tiny"
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw.pop("profile", None)
    overrides = {
        "results": str(results),
        "seeds": [0],
        "data": {"source": "synthetic", "root": str(tiny_data_root)},
        "synthetic": copy.deepcopy(TINY_SYNTHETIC),
        "preprocess": copy.deepcopy(TINY_PREPROCESS),
        "backbones": {
            "source": "tiny",
            "dir": str(tiny_backbones),
            "video": str(tiny_backbones / "vjepa2"),
            "audio": str(tiny_backbones / "ast"),
            "image": str(tiny_backbones / "dinov3"),
            "clip": str(tiny_backbones / "clip"),
            "m3dm_rgb": str(tiny_backbones / "dino_vitb8"),
            "dinomaly_encoder": str(tiny_backbones / "dinov2_reg"),
        },
        "causal_film": {"d_model": 16, "sensor_hidden_dim": 8},
        "train": {"epochs": 2, "batch_size": 4, "warmup_epochs": 0, "device": "cpu"},
    }
    return prepare(deep_merge(raw, overrides))
