"""Late Fusion baseline: autoencoder shapes, aggregation, z-score fusion, weight search, a tiny end-to-end run."""

from pathlib import Path

import numpy as np
import pytest
import torch

from weldfilm.methods.late_fusion.model import (AudioAutoEncoder, VideoAutoEncoder, fuse_scores,
                                                   moving_average_max, search_fusion_weight, zscore_stats)
from weldfilm.errors import ConfigError, DataError


def test_audio_autoencoder_shapes_and_bottleneck():
    model = AudioAutoEncoder(n_bins=33, hidden_channels=(16,), bottleneck=48)
    batch = {"audio": torch.rand(2, 1, 33, 10)}
    assert model.frame_scores(batch).shape == (2, 10)
    assert model.anomaly_scores(batch).shape == (2,)
    assert model.encoder(batch["audio"][:, 0]).shape == (2, 48, 10)
    assert any(isinstance(m, torch.nn.LeakyReLU) and m.negative_slope == 0.2 for m in model.modules())
    model.training_losses(batch)["loss"].backward()


def test_audio_autoencoder_rejects_mel_or_transposed_input():
    model = AudioAutoEncoder(n_bins=33)
    with pytest.raises(DataError, match="stft"):
        model.frame_scores({"audio": torch.rand(2, 1, 10, 33)})


def test_video_autoencoder_shapes_and_frozen_seeded_projection():
    model = VideoAutoEncoder(feature_dim=24, hidden_dims=(8, 4), projection_seed=3, window=60)
    video = torch.rand(2, 5, 3, 8, 8)
    assert model.frame_features({"video": video}).shape == (2, 5, 24)
    assert model.frame_scores({"video": video}).shape == (2, 5)
    assert model.anomaly_scores({"video": video}).shape == (2,)
    assert "projection" not in dict(model.named_parameters())  # frozen: not optimised
    assert torch.equal(model.projection, VideoAutoEncoder(24, (8, 4), projection_seed=3).projection)
    assert not torch.equal(model.projection, VideoAutoEncoder(24, (8, 4), projection_seed=4).projection)
    # stage 1 sees only the per-frame mean colour
    flat = video.mean(dim=(3, 4), keepdim=True).expand_as(video)
    assert torch.allclose(model.frame_features({"video": flat}), model.frame_features({"video": video}), atol=1e-6)
    assert sum(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in model.modules()) == 2


def test_moving_average_max_is_the_mean_for_short_clips_and_the_peak_window_otherwise():
    scores = torch.tensor([[1.0, 2.0, 3.0, 10.0, 0.0, 0.0]])
    assert torch.allclose(moving_average_max(scores, 60), torch.tensor([16.0 / 6]))
    assert torch.allclose(moving_average_max(scores, 2), torch.tensor([6.5]))  # (3 + 10) / 2
    assert torch.allclose(moving_average_max(scores, 6), torch.tensor([16.0 / 6]))  # window == length


def test_zscore_fusion_on_hand_numbers():
    stats = {"audio": zscore_stats(np.array([1.0, 3.0]), "audio"),
             "video": zscore_stats(np.array([10.0, 30.0]), "video")}
    assert stats["audio"] == {"mean": 2.0, "std": 1.0} and stats["video"] == {"mean": 20.0, "std": 10.0}
    fused = fuse_scores(np.array([4.0, 2.0]), np.array([20.0, 40.0]), stats, 0.37, 0.63)
    assert np.allclose(fused, [0.37 * 2.0 + 0.63 * 0.0, 0.37 * 0.0 + 0.63 * 2.0])


def test_zscore_rejects_constant_training_scores():
    with pytest.raises(DataError, match="equal"):
        zscore_stats(np.array([1.0, 1.0, 1.0]), "video")


def test_weight_search_finds_the_informative_branch():
    stats = {"audio": {"mean": 0.0, "std": 1.0}, "video": {"mean": 0.0, "std": 1.0}}
    labels = np.array([0, 0, 0, 1, 1, 1])
    audio = np.array([0.0, 0.1, 0.2, 1.0, 1.1, 1.2])  # separates perfectly
    video = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])  # anti-informative
    best = search_fusion_weight(audio, video, labels, stats, steps=11)
    assert best["i_auroc"] == 1.0 and best["w_audio"] >= 0.5 and np.isclose(best["w_audio"] + best["w_video"], 1.0)
    with pytest.raises(DataError, match="good and defective"):
        search_fusion_weight(audio, video, np.zeros(6), stats)


@pytest.fixture
def late_fusion_run(tiny_config, tmp_path):
    """A Late Fusion run config on the tiny synthetic set (manifest written here), tiny sizes."""
    from weldfilm.config import run_config
    from weldfilm.data.manifest import build_manifest

    build_manifest(tiny_config["data"]["root"], Path(tiny_config["results"]) / "data" / "manifest.csv")

    def make(protocol="fair", **section):
        cfg = run_config(tiny_config, "late_fusion", seed=0, protocol=protocol)
        cfg["late_fusion"].update({"n_fft": 64, "hop_length": 512, "audio_frames": 16, "video_frames": 4,
                                   "frame_size": 16, "audio_hidden_channels": [8], "video_feature_dim": 32,
                                   "video_hidden_dims": [16, 8], "batch_size": 8, "audio_epochs": 2,
                                   "video_epochs": 2, **section})
        return cfg
    return make, tmp_path / "run"


def test_train_and_evaluate_on_the_tiny_synthetic_set(late_fusion_run):
    import pandas as pd

    from weldfilm.methods.late_fusion.method import LateFusionMethod
    from weldfilm.evaluation import SCORE_COLUMNS, evaluate_splits
    from training_helpers import train_and_score_both_ways

    from weldfilm.io import read_json

    make, run_dir = late_fusion_run
    metadata, _ = train_and_score_both_ways(make(), run_dir)
    scored_splits = []
    score_branches = LateFusionMethod._score_branches

    def counting(self, split):
        scored_splits.append(split)
        return score_branches(self, split)
    described = metadata["describe"]
    assert metadata["selection_split"] == described["selection_split"] == "val"
    assert set(described["modalities"]) == {"audio", "video"} and described["augmentation"] is False
    assert described["input_resolution"]["audio"]["bins"] == 33
    assert metadata["token_shapes"] == {"audio": [1, 33, 16], "video": [4, 3, 16, 16]}  # what the AEs read
    for branch in ("audio", "video"):
        assert (run_dir / "checkpoints" / f"{branch}_best.pt").is_file()
        assert metadata["fit"]["submodels"][branch]["selection"] == "val_auroc"
    fusion = read_json(run_dir / "fusion.json")
    assert fusion["weights_from"] == "config" and (fusion["w_audio"], fusion["w_video"]) == (0.37, 0.63)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LateFusionMethod, "_score_branches", counting)
        metrics = evaluate_splits(run_dir, ["val", "test"], {s: run_dir / "eval" / s for s in ("val", "test")})[
            "test"]  # one method object: TEST's VAL threshold re-uses VAL's scores
    assert scored_splits == ["val", "test"]
    table = pd.read_csv(run_dir / "eval" / "test" / "scores.csv")
    assert list(table.columns) == SCORE_COLUMNS and np.isfinite(table["score"]).all()
    assert table["score"].nunique() > 1 and 0.0 <= metrics["i_auroc"] <= 1.0

    fresh = LateFusionMethod(make(), run_dir, torch.device("cpu"))  # fused = 0.37 z(audio) + 0.63 z(video)
    frame = fresh.score("test")
    assert frame["sample_id"].tolist() == table["sample_id"].tolist()
    expected = fuse_scores(frame["audio_score"], frame["video_score"], fusion["stats"], 0.37, 0.63)
    assert np.allclose(frame["score"], expected) and np.allclose(frame["score"], table["score"])
    train = fresh.score("train")  # z-scores use TRAIN statistics: the train split is standardised
    assert abs(train["score"].mean()) < 1e-6


def test_weight_search_is_recorded_with_its_split(late_fusion_run):
    from weldfilm.methods.late_fusion.method import LateFusionMethod
    from weldfilm.io import read_json

    make, run_dir = late_fusion_run
    method = LateFusionMethod(make("paper_faithful", search_weights=True, audio_epochs=1, video_epochs=1),
                              run_dir, torch.device("cpu"))
    assert method.selection == "test"  # the authors validated on TEST
    method.fit()
    fusion = read_json(run_dir / "fusion.json")
    assert fusion["weights_from"] == "grid search on test" and 0.0 <= fusion["search_i_auroc"] <= 1.0


def test_fair_protocol_refuses_test_selection(late_fusion_run):
    from weldfilm.methods.late_fusion.method import LateFusionMethod

    make, run_dir = late_fusion_run
    cfg = make()
    cfg["train"]["selection_split"] = "test"
    with pytest.raises(ConfigError, match="fair"):
        LateFusionMethod(cfg, run_dir, torch.device("cpu"))


def test_heads_start_from_the_run_seed_whatever_the_global_rng(late_fusion_run):
    from weldfilm.methods.late_fusion.method import LateFusionMethod

    make, run_dir = late_fusion_run
    method = LateFusionMethod(make(), run_dir, torch.device("cpu"))
    states = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        states.append(method._head("audio").state_dict())
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])


def test_numpy_stft_matches_librosa():
    import librosa

    from weldfilm.data.readers import stft_magnitude

    rng = np.random.default_rng(0)
    for length, n_fft, hop in ((5000, 512, 256), (300, 64, 16), (100, 64, 512)):
        wave = rng.standard_normal(length).astype(np.float32)
        ours = stft_magnitude(wave, n_fft, hop)
        reference = np.abs(librosa.stft(wave, n_fft=n_fft, hop_length=hop))
        assert ours.shape == reference.shape and ours.dtype == np.float32
        assert np.allclose(ours, reference, rtol=1e-4, atol=1e-5 * reference.max())


def test_split_result_cache_is_per_object_and_recomputes_after_a_refit(tmp_path, late_fusion_run):
    from weldfilm.methods.late_fusion.method import LateFusionMethod

    make, _ = late_fusion_run
    method, calls = LateFusionMethod(make(), tmp_path, torch.device("cpu")), []
    fitted = tmp_path / "checkpoints" / "best.pt"

    def compute():
        calls.append(1)
        return len(calls)

    assert method.split_result("val", [fitted], compute) == 1  # not fitted: never cached
    fitted.parent.mkdir()
    fitted.write_bytes(b"weights")
    assert method.split_result("val", [fitted], compute) == 2
    assert method.split_result("VAL", [fitted], compute) == 2  # cached
    assert method.split_result("test", [fitted], compute) == 3  # another split
    assert LateFusionMethod(make(), tmp_path, torch.device("cpu")).split_result("val", [fitted], compute) == 4
    fitted.write_bytes(b"re-fitted weights")
    assert method.split_result("val", [fitted], compute) == 5  # a re-fit


def test_paper_profile_sizes_reach_the_late_fusion_heads():
    """Spec 10.4.1, pinned: 192 kHz audio, n_fft 16384 -> an audio AE over 8193 frequency bins (1024 frames),
    hop 8192, and a video AE over 2304-wide (SlowFast-sized) frame features; read from config.yaml's paper
    profile through the heads the method builds, not retyped."""
    import yaml

    from weldfilm.methods.late_fusion.method import AudioHead, VideoHead
    from weldfilm.config import DEFAULT_CONFIG, prepare

    section = prepare({**yaml.safe_load(DEFAULT_CONFIG.read_text()), "profile": "paper"})["late_fusion"]
    assert (section["audio_sr"], section["n_fft"], section["hop_length"], section["audio_frames"]) == (192000, 16384, 8192, 1024)
    assert section["video_feature_dim"] == 2304
    audio = AudioHead(section)
    first_conv = next(m for m in audio.modules() if isinstance(m, torch.nn.Conv1d))
    assert first_conv.in_channels == 8193
    video = VideoHead(section)
    first_linear = next(m for m in video.modules() if isinstance(m, torch.nn.Linear) and m.weight.requires_grad)
    assert first_linear.in_features == 2304
