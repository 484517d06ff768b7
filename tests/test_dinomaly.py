"""Dinomaly baseline: linear attention, hard mining, StableAdamW, maps and scores, a tiny end-to-end run."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from weldfilm.baselines.dinomaly_model import (DinomalyHead, LinearAttention, anomaly_map, default_layer_groups,
                                               elu_feature_map, global_cosine_hard_mining, image_scores)
from weldfilm.baselines.optim import StableAdamW
from weldfilm.errors import ConfigError, DataError


def tiny_encoder(layers: int = 4):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    config = Dinov2WithRegistersConfig(hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, mlp_ratio=2,
                                       patch_size=4, image_size=16, num_register_tokens=4)
    return Dinov2WithRegistersModel(config).eval()


def test_linear_attention_equals_its_explicit_matrix_form():
    torch.manual_seed(0)
    attention = LinearAttention(dim=8, num_heads=2)
    x = torch.randn(2, 5, 8)
    q, k, v = attention.qkv(x).reshape(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    weights = elu_feature_map(q) @ elu_feature_map(k).transpose(-1, -2)  # (B, heads, N, N), no softmax
    weights = weights / weights.sum(dim=-1, keepdim=True)
    expected = attention.proj((weights @ v).transpose(1, 2).reshape(2, 5, 8))
    assert torch.allclose(attention(x), expected, atol=1e-5)


def test_default_layer_groups_match_vit_base_and_scale_down():
    assert default_layer_groups(12) == [[2, 3, 4, 5], [6, 7, 8, 9]]
    assert default_layer_groups(4) == [[1], [2]]
    assert default_layer_groups(2) == [[0], [1]]


def test_hard_mining_scales_the_easiest_points_gradient_by_the_factor():
    torch.manual_seed(0)
    target = torch.randn(1, 4, 2, 2)
    recon = torch.randn(1, 4, 2, 2, requires_grad=True)
    plain = torch.autograd.grad(global_cosine_hard_mining([target], [recon], 0.0, 0.1), recon)[0]
    mined_loss = global_cosine_hard_mining([target], [recon], 0.5, 0.1)
    mined = torch.autograd.grad(mined_loss, recon)[0]
    distance = 1 - F.cosine_similarity(target, recon.detach(), dim=1)[0]  # (2, 2)
    easy = distance < distance.flatten().sort().values[2]  # the 2 easiest of 4 points
    assert easy.sum() == 2
    assert torch.allclose(mined[0][:, easy], 0.1 * plain[0][:, easy])
    assert torch.allclose(mined[0][:, ~easy], plain[0][:, ~easy])
    assert torch.isclose(mined_loss, global_cosine_hard_mining([target], [recon], 0.0, 0.1))  # forward unchanged


def test_stable_adamw_minimises_a_toy_problem_and_clips_updates():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.tensor([3.0, -2.0]))
    opt = StableAdamW([w], lr=0.1, weight_decay=0.0, eps=1e-10, amsgrad=True)
    for _ in range(200):
        opt.zero_grad()
        (w - torch.tensor([1.0, 0.5])).square().sum().backward()
        opt.step()
    assert torch.allclose(w, torch.tensor([1.0, 0.5]), atol=0.05)
    # first step: Adam moves each weight by lr; a gradient spike on step 2 is clipped by RMS(g^2 / v_hat)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = StableAdamW([p], lr=0.1, weight_decay=0.0, betas=(0.0, 0.999))
    p.grad = torch.ones(1)
    opt.step()
    assert torch.allclose(p, torch.tensor([-0.1]))
    p.grad = torch.full((1,), 100.0)
    before = p.detach().clone()
    opt.step()
    v_hat = (0.999 * 0.001 * 1 + 0.001 * 100.0 ** 2) / (1 - 0.999 ** 2)
    rms = (100.0 ** 2 / v_hat) ** 0.5
    unclipped = 0.1 * 100.0 / v_hat ** 0.5
    assert rms > 1 and torch.allclose(before - p.detach(), torch.tensor([unclipped / rms]), rtol=1e-4)


def test_stable_adamw_decoupled_weight_decay():
    p = torch.nn.Parameter(torch.ones(3))
    opt = StableAdamW([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.zeros(3)
    opt.step()
    assert torch.allclose(p, torch.full((3,), 1 - 0.1 * 0.5))


def test_maps_and_scores():
    encoder_maps = [torch.ones(2, 3, 4, 4), torch.ones(2, 3, 4, 4)]
    decoder_maps = [torch.ones(2, 3, 4, 4), torch.ones(2, 3, 4, 4)]
    decoder_maps[0][1, :, 0, 0] = -1.0  # one opposite patch in sample 1 -> 1 - cos = 2 there
    maps = anomaly_map(encoder_maps, decoder_maps, size=16, sigma=0.0)
    assert maps.shape == (2, 1, 16, 16)
    assert torch.allclose(maps[0], torch.zeros(1, 16, 16), atol=1e-6) and maps[1].max() > 0.5
    flat = torch.arange(100.0).reshape(1, 1, 10, 10)
    assert image_scores(flat).item() == 99.0 and image_scores(flat, 0.02).item() == 98.5


def test_head_shapes_state_dict_and_run_scores():
    head = DinomalyHead(tiny_encoder(), [[1], [2]], decoder_depth=2, crop_size=16, map_size=16, blur_sigma=1.0,
                        hard_ramp_steps=4)
    assert len(head.encoder.encoder.layer) == 3  # blocks after the last used one are dropped
    batch = {"post_weld_images": torch.rand(3, 2, 3, 20, 20), "num_images": torch.tensor([2, 1, 2]),
             "sample_id": ["a", "b", "c"]}
    head.train()
    losses = head.training_losses(batch)
    losses["loss"].backward()
    assert head.encoder.training is False and all(p.grad is None for p in head.encoder.parameters())
    assert int(head.train_steps) == 1 and head.current_hard_ratio() == pytest.approx(0.9 / 4)
    images, run_index = head.images_of(batch)
    assert images.shape == (5, 3, 16, 16) and run_index.tolist() == [0, 0, 1, 2, 2]
    encoder_maps, decoder_maps = head(images)
    assert [m.shape for m in encoder_maps] == [(5, 16, 4, 4)] * 2 == [m.shape for m in decoder_maps]
    head.eval()
    with torch.no_grad():
        maps, _ = head.anomaly_maps(batch)
        scores = head.anomaly_scores(batch)
    per_image = maps.flatten(1).amax(dim=1)
    assert torch.allclose(scores, torch.stack([per_image[:2].max(), per_image[2], per_image[3:].max()]))
    head.run_aggregation = "mean"
    with torch.no_grad():
        mean_scores = head.anomaly_scores(batch)
    assert torch.allclose(mean_scores, torch.stack([per_image[:2].mean(), per_image[2], per_image[3:].mean()]))
    state = head.state_dict()
    assert not any(key.startswith("encoder.") for key in state) and "train_steps" in state
    DinomalyHead(tiny_encoder(), [[1], [2]], 2, crop_size=16).load_state_dict(state)  # strict, encoder excluded


def test_head_rejects_bad_settings_and_runs_without_images():
    with pytest.raises(ConfigError, match="patch size"):
        DinomalyHead(tiny_encoder(), [[1], [2]], 2, crop_size=18)
    with pytest.raises(ConfigError, match="multiple"):
        DinomalyHead(tiny_encoder(), [[1], [2]], 3, crop_size=16)
    with pytest.raises(ConfigError, match="blocks"):
        DinomalyHead(tiny_encoder(), [[1], [7]], 2, crop_size=16)
    with pytest.raises(ConfigError, match="run_aggregation"):
        DinomalyHead(tiny_encoder(), [[1], [2]], 2, crop_size=16, run_aggregation="median")
    head = DinomalyHead(tiny_encoder(), [[1], [2]], 2, crop_size=16)
    with pytest.raises(DataError, match="run-b"):
        head.images_of({"post_weld_images": torch.rand(2, 2, 3, 16, 16), "num_images": torch.tensor([1, 0]),
                        "sample_id": ["run-a", "run-b"]})


@pytest.fixture
def dinomaly_run(tiny_config, tmp_path):
    from weldfilm.config import run_config
    from weldfilm.data.manifest import build_manifest
    from weldfilm.models.tiny import write_tiny_backbones

    build_manifest(tiny_config["data"]["root"], Path(tiny_config["results"]) / "data" / "manifest.csv")
    write_tiny_backbones(tiny_config["backbones"]["dir"], seed=0)

    def make(protocol="fair"):
        cfg = run_config(tiny_config, "dinomaly", seed=0, protocol=protocol)
        cfg["dinomaly"].update(resize=32, crop_size=28, epochs=2, batch_size=4, map_size=16, blur_sigma=1.0,
                               warmup_iters=2, hard_ramp_iters=4)
        return cfg
    return make, tmp_path / "run"


def test_train_and_evaluate_on_the_tiny_synthetic_set(dinomaly_run):
    import pandas as pd

    from weldfilm.baselines.dinomaly import DinomalyMethod
    from training_helpers import train_and_score_both_ways

    from weldfilm.evaluation import SCORE_COLUMNS

    make, run_dir = dinomaly_run
    metadata, metrics = train_and_score_both_ways(make(), run_dir)
    described = metadata["describe"]
    assert metadata["selection_split"] == described["selection_split"] == "val"
    assert described["modalities"] == ["post_weld_images"] and described["augmentation"] is False
    assert described["input_resolution"]["post_weld_images"]["crop"] == 28
    assert metadata["fit"]["selection"] == "val_auroc" and metadata["fit"]["epochs_run"] == 2
    assert (run_dir / "checkpoints" / "best.pt").is_file()

    table = pd.read_csv(run_dir / "eval" / "test" / "scores.csv")
    assert list(table.columns) == SCORE_COLUMNS and np.isfinite(table["score"]).all()
    assert table["score"].nunique() > 1 and 0.0 <= metrics["i_auroc"] <= 1.0

    assert described["run_score"].startswith("mean over the run's images")  # the default run_aggregation
    fresh = DinomalyMethod(make(), run_dir, torch.device("cpu"))
    maps = fresh.anomaly_maps("test")  # per run: the map of its highest-scoring image
    assert maps.shape == (len(table), 16, 16)
    assert (maps.reshape(len(table), -1).max(axis=1) >= table["score"] - 1e-5).all()  # best image >= the mean
    max_cfg = make()
    max_cfg["dinomaly"]["run_aggregation"] = "max"
    max_scores = DinomalyMethod(max_cfg, run_dir, torch.device("cpu")).score("test")
    assert np.allclose(maps.reshape(len(table), -1).max(axis=1), max_scores["score"], atol=1e-5)
    assert DinomalyMethod(make("paper_faithful"), run_dir, torch.device("cpu")).selection == "test"
