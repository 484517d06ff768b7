"""Dinomaly baseline: linear attention, hard mining, StableAdamW, noisy bottleneck, init, tokens, map blur,
maps and scores, the paper profile's numbers, a tiny end-to-end run."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from weldfilm.methods.dinomaly.model import (DEFAULT_RUN_AGGREGATION, BottleneckMLP, DinomalyHead, LinearAttention,
                                               anomaly_map, default_layer_groups, elu_feature_map,
                                               global_cosine_hard_mining, image_scores)
from weldfilm.metrics.maps import gaussian_blur, gaussian_kernel_1d
from weldfilm.training.optim import StableAdamW
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
    assert head.run_aggregation == "mean"  # the constructor's default
    assert torch.allclose(scores, torch.stack([per_image[:2].mean(), per_image[2], per_image[3:].mean()]))
    head.run_aggregation = "max"
    with torch.no_grad():
        max_scores = head.anomaly_scores(batch)
    assert torch.allclose(max_scores, torch.stack([per_image[:2].max(), per_image[2], per_image[3:].max()]))
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
    with pytest.raises(ConfigError, match="blur_kernel_size"):
        DinomalyHead(tiny_encoder(), [[1], [2]], 2, crop_size=16, blur_kernel_size=4)
    with pytest.raises(ConfigError, match="blur_padding"):
        DinomalyHead(tiny_encoder(), [[1], [2]], 2, crop_size=16, blur_padding="wrap")
    head = DinomalyHead(tiny_encoder(), [[1], [2]], 2, crop_size=16)
    with pytest.raises(DataError, match="run-b"):
        head.images_of({"post_weld_images": torch.rand(2, 2, 3, 16, 16), "num_images": torch.tensor([1, 0]),
                        "sample_id": ["run-a", "run-b"]})


def test_bottleneck_drops_its_input_features_first():
    bottleneck = BottleneckMLP(dim=8, hidden=32, dropout=0.5)
    kinds = [type(m) for m in bottleneck.net]
    assert kinds == [torch.nn.Dropout, torch.nn.Linear, torch.nn.GELU, torch.nn.Dropout, torch.nn.Linear,
                     torch.nn.Dropout]  # upstream bMlp: drop -> fc1 -> act -> drop -> fc2 -> drop
    assert all(m.p == 0.5 for m in bottleneck.net if isinstance(m, torch.nn.Dropout))
    assert (bottleneck.net[1].in_features, bottleneck.net[1].out_features) == (8, 32)
    assert (bottleneck.net[4].in_features, bottleneck.net[4].out_features) == (32, 8)
    seen = []
    bottleneck.net[1].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach()))
    x = torch.ones(4, 50, 8)
    torch.manual_seed(0)
    bottleneck.train()
    bottleneck(x)
    first_linear_input = seen[-1]
    assert (first_linear_input == 0).any()  # the input features themselves are dropped ...
    assert torch.allclose(first_linear_input[first_linear_input != 0], torch.tensor(2.0))  # ... and rescaled
    assert not torch.equal(bottleneck(x), bottleneck(x))  # noisy in training
    bottleneck.eval()
    out = bottleneck(x)
    assert torch.equal(seen[-1], x) and torch.equal(out, bottleneck(x))  # no dropout at all in eval


def test_trainable_weights_start_from_a_truncated_normal_with_std_001():
    encoder = tiny_encoder()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    torch.manual_seed(0)
    head = DinomalyHead(encoder, [[1], [2]], decoder_depth=2, crop_size=16)
    linears = [m for part in (head.bottleneck, head.decoder) for m in part.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 + 2 * 4  # bottleneck fc1, fc2; per decoder block qkv, proj, mlp fc1, fc2
    weights = torch.cat([m.weight.flatten() for m in linears])
    assert weights.abs().max() <= 0.03 + 1e-7  # truncated at +-3 std (upstream a=-0.03, b=0.03)
    assert weights.std().item() == pytest.approx(0.01 * 0.9866, rel=0.08)  # std of N(0, 0.01) cut at 3 std
    assert abs(weights.mean().item()) < 1e-3
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in linears)
    norms = [m for m in head.decoder.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(torch.equal(m.weight, torch.ones_like(m.weight)) and m.eps == 1e-8 for m in norms)
    assert all(torch.equal(before[k], v) for k, v in head.encoder.state_dict().items())  # encoder untouched


def test_prefix_tokens_go_through_the_decoder_and_are_dropped_from_the_maps():
    encoder = tiny_encoder()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        hidden = encoder(pixel_values=images, output_hidden_states=True).hidden_states
    prefix = 1 + encoder.config.num_register_tokens  # CLS + 4 registers
    expected = [torch.stack([hidden[2][:, prefix:]]).mean(0), torch.stack([hidden[3][:, prefix:]]).mean(0)]
    for keep, tokens in ((True, prefix + 16), (False, 16)):
        torch.manual_seed(0)
        head = DinomalyHead(encoder, [[1], [2]], decoder_depth=2, crop_size=16, decode_prefix_tokens=keep).eval()
        seen = []
        head.bottleneck.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape))
        head.decoder[-1].register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
        with torch.no_grad():
            encoder_maps, decoder_maps = head(images)
        assert seen == [(2, tokens, 16), (2, tokens, 16)]
        for got, want in zip(encoder_maps, expected):  # maps hold the patch tokens only, in raster order
            assert got.shape == (2, 16, 4, 4) and torch.allclose(got, want.transpose(1, 2).reshape(2, 16, 4, 4))
        assert [m.shape for m in decoder_maps] == [(2, 16, 4, 4)] * 2
        if keep:
            kept = decoder_maps
    assert not torch.allclose(kept[0], decoder_maps[0])  # the prefix tokens take part in linear attention


def test_dinomaly_blur_is_a_5x5_gaussian_with_sigma_4_and_zero_padding():
    # hand computation of upstream get_gaussian_kernel(5, 4): exp(-d^2 / 32) for d = -2..2, normalised
    taps = [math.exp(-4 / 32), math.exp(-1 / 32), 1.0, math.exp(-1 / 32), math.exp(-4 / 32)]
    taps = [t / sum(taps) for t in taps]
    assert [round(t, 5) for t in taps] == [0.18763, 0.20607, 0.21261, 0.20607, 0.18763]
    assert torch.allclose(gaussian_kernel_1d(4.0, 5, torch.float64), torch.tensor(taps, dtype=torch.float64))
    impulse = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    impulse[0, 0, 4, 4] = 1.0
    blurred = gaussian_blur(impulse, 4.0, kernel_size=5, padding="zeros")
    kernel_2d = torch.tensor(taps, dtype=torch.float64).outer(torch.tensor(taps, dtype=torch.float64))
    assert blurred.shape == impulse.shape and torch.allclose(blurred[0, 0, 2:7, 2:7], kernel_2d)
    assert blurred[0, 0, :2].abs().max() == 0 and blurred[0, 0, 2:7, 2:7].sum().item() == pytest.approx(1.0)
    ones = gaussian_blur(torch.ones(1, 1, 8, 8, dtype=torch.float64), 4.0, kernel_size=5, padding="zeros")
    assert ones[0, 0, 4, 4].item() == pytest.approx(1.0)
    assert ones[0, 0, 0, 0].item() == pytest.approx(sum(taps[2:]) ** 2)  # zero padding: 0.6063^2 at a corner
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur(impulse, 4.0, kernel_size=4)
    # the head's default and the map function's default are Dinomaly's
    encoder_maps = [torch.randn(1, 3, 4, 4)]
    decoder_maps = [torch.randn(1, 3, 4, 4)]
    raw = anomaly_map(encoder_maps, decoder_maps, size=16, sigma=0.0)
    assert torch.allclose(anomaly_map(encoder_maps, decoder_maps, size=16, sigma=4.0),
                          gaussian_blur(raw, 4.0, kernel_size=5, padding="zeros"))
    head = DinomalyHead(tiny_encoder(), [[1], [2]], 2, crop_size=16)
    assert (head.blur_kernel_size, head.blur_sigma, head.blur_padding) == (5, 4.0, "zeros")


def test_m3dm_blur_keeps_its_radius_3_sigma_reflect_kernel():
    torch.manual_seed(0)
    maps = torch.rand(2, 1, 32, 32)
    assert torch.allclose(gaussian_blur(maps, 4.0), gaussian_blur(maps, 4.0, kernel_size=25, padding="reflect"))


def _schema_dinomaly():
    import yaml

    from weldfilm.config import DEFAULT_CONFIG

    schema = yaml.safe_load((DEFAULT_CONFIG.parent / "workflow" / "schemas" / "config.schema.yaml").read_text())
    return schema["properties"]["dinomaly"]["properties"]


def test_run_aggregation_default_agrees_in_schema_constructor_and_docs():
    import inspect

    default = _schema_dinomaly()["run_aggregation"]["default"]
    assert default == DEFAULT_RUN_AGGREGATION == "mean"
    assert inspect.signature(DinomalyHead).parameters["run_aggregation"].default == default
    for text in (DinomalyHead.__doc__, DinomalyHead.anomaly_scores.__doc__, DinomalyHead.scores_and_maps.__doc__):
        assert f"{default} (" in text  # "the mean (``run_aggregation`` default ...)", "mean (or max, ...)"
    schema = _schema_dinomaly()
    assert (schema["blur_kernel_size"]["default"], schema["blur_sigma"]["default"],
            schema["blur_padding"]["default"], schema["dropout"]["default"],
            schema["decode_prefix_tokens"]["default"]) == (5, 4.0, "zeros", 0.2, True)


def test_paper_profile_pins_the_papers_dinomaly_numbers():
    import yaml
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from weldfilm.config import DEFAULT_CONFIG, prepare

    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["profile"] = "paper"
    section = prepare(raw)["dinomaly"]
    assert section["layer_groups"] == [[2, 3, 4, 5], [6, 7, 8, 9]] == default_layer_groups(12)
    assert (section["resize"], section["crop_size"], section["decoder_depth"], section["bottleneck_ratio"]) == (
        448, 392, 8, 4.0)
    assert (section["dropout"], section["blur_kernel_size"], section["blur_sigma"], section["blur_padding"]) == (
        0.2, 5, 4.0, "zeros")
    assert (section["lr"], section["final_lr"], section["weight_decay"], section["eps"], section["warmup_iters"],
            section["gradient_clip"], section["hard_ratio"], section["hard_ramp_iters"], section["easy_factor"],
            section["map_size"], section["score_top_ratio"]) == (
        2e-3, 2e-4, 1e-4, 1e-10, 100, 0.1, 0.9, 1000, 0.1, 256, 0.0)
    assert section["decode_prefix_tokens"] is True
    # a 12-block encoder of ViT-B's depth and heads (narrow, to stay fast): the head the paper profile builds
    base = Dinov2WithRegistersConfig()  # transformers' default: dinov2-with-registers-base's width and depth
    assert (base.hidden_size, base.num_hidden_layers, base.num_attention_heads, base.num_register_tokens) == (
        768, 12, 12, 4)
    config = Dinov2WithRegistersConfig(hidden_size=48, num_hidden_layers=12, num_attention_heads=12, patch_size=14,
                                       image_size=28, num_register_tokens=4)
    head = DinomalyHead(Dinov2WithRegistersModel(config), section["layer_groups"], section["decoder_depth"],
                        crop_size=28, dropout=section["dropout"], bottleneck_ratio=section["bottleneck_ratio"])
    assert head.target_layers == list(range(2, 10)) and len(head.encoder.encoder.layer) == 10
    assert len(head.decoder) == 8 and [type(m) for m in head.bottleneck.net][0] is torch.nn.Dropout
    assert (head.bottleneck.net[1].in_features, head.bottleneck.net[1].out_features) == (48, 4 * 48)
    assert section["crop_size"] % 14 == 0 and section["crop_size"] // 14 == 28  # ViT-B/14: a 28 x 28 patch grid


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

    from weldfilm.methods.dinomaly.method import DinomalyMethod
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
    assert (Path(make()["results"]) / "features" / "dinomaly").is_dir()  # encoder_cache is on by default

    table = pd.read_csv(run_dir / "eval" / "test" / "scores.csv")
    assert list(table.columns) == SCORE_COLUMNS and np.isfinite(table["score"]).all()
    assert table["score"].nunique() > 1 and 0.0 <= metrics["i_auroc"] <= 1.0

    assert described["run_score"].startswith("mean over the run's images")  # the default run_aggregation
    assert any(note.startswith("run score = mean") for note in described["notes"])
    assert any("selected by VAL" in note for note in described["notes"])
    fresh = DinomalyMethod(make(), run_dir, torch.device("cpu"))
    maps = fresh.anomaly_maps("test")  # per run: the map of its highest-scoring image
    assert maps.shape == (len(table), 16, 16)
    assert (maps.reshape(len(table), -1).max(axis=1) >= table["score"] - 1e-5).all()  # best image >= the mean
    max_cfg = make()
    max_cfg["dinomaly"]["run_aggregation"] = "max"
    max_scores = DinomalyMethod(max_cfg, run_dir, torch.device("cpu")).score("test")
    assert np.allclose(maps.reshape(len(table), -1).max(axis=1), max_scores["score"], atol=1e-5)
    assert DinomalyMethod(make("paper_faithful"), run_dir, torch.device("cpu")).selection == "test"


def test_cached_encoder_outputs_give_the_same_maps_as_the_encoder():
    head = DinomalyHead(tiny_encoder(), [[1], [2]], decoder_depth=2, crop_size=16, map_size=16).eval()
    batch = {"post_weld_images": torch.rand(3, 2, 3, 20, 20), "num_images": torch.tensor([2, 1, 2]),
             "sample_id": ["a", "b", "c"], "label": torch.tensor([0, 1, 0])}
    images, _ = head.images_of(batch)
    with torch.no_grad():
        direct = head(images)
        encoded = head.encode_runs(batch)
        assert encoded["tokens"].shape == (3, 2, 1 + 4 + 16, 16) and encoded["targets"].shape == (3, 2, 2, 16, 16)
        assert encoded["tokens"][1, 1].abs().max() == 0  # run b has one image: its second slot stays empty
        cached = {"encoded_tokens": encoded["tokens"], "encoded_targets": encoded["targets"],
                  "num_images": encoded["num_images"], "sample_id": batch["sample_id"], "label": batch["label"]}
        tokens, targets, run_index = head.inputs_of(cached)
        assert run_index.tolist() == [0, 0, 1, 2, 2]
        for a, b in zip(direct, head.reconstruct(tokens, targets)):
            assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert torch.equal(head.anomaly_scores(batch), head.anomaly_scores(cached))
        assert torch.equal(head.anomaly_maps(batch)[0], head.anomaly_maps(cached)[0])


@pytest.mark.slow
def test_encoder_cache_once_per_split_shared_by_seeds_and_protocols_and_same_scores(dinomaly_run, monkeypatch):
    import json

    import pandas as pd

    from weldfilm.methods.dinomaly import cache as dinomaly_cache
    from weldfilm.methods.dinomaly.method import DinomalyMethod
    from weldfilm.errors import CheckpointError
    from weldfilm.runner import fit_run, start_run

    make, run_dir = dinomaly_run
    plain = make()
    plain["dinomaly"]["encoder_cache"] = False
    fit_run(start_run(plain, run_dir / "plain"))
    plain_scores = DinomalyMethod(plain, run_dir / "plain", torch.device("cpu")).score("test")

    cached = make()
    cached["dinomaly"]["encoder_cache"] = True
    built = []
    real_build = dinomaly_cache.build
    monkeypatch.setattr(dinomaly_cache, "build", lambda paths, *a, **k: (built.append(paths["tokens"].name),
                                                                         real_build(paths, *a, **k)))
    fit_run(start_run(cached, run_dir / "cached"))
    cached_scores = DinomalyMethod(cached, run_dir / "cached", torch.device("cpu")).score("test")
    assert sorted(built) == ["test.tokens.npy", "train.tokens.npy", "val.tokens.npy"]  # each split once
    pd.testing.assert_frame_equal(plain_scores, cached_scores, check_exact=False, rtol=1e-5, atol=1e-6)

    folder = dinomaly_cache.cache_dir(cached)
    assert folder.parent == Path(cached["results"]) / "features" / "dinomaly"
    meta = json.loads((folder / "val.tokens.json").read_text())
    assert meta["key"] == dinomaly_cache.cache_key(cached) and len(meta["sample_ids"]) == len(meta["labels"])
    other_seed = make("paper_faithful")  # another protocol (and seed): same encoder outputs, no new build
    other_seed["dinomaly"]["encoder_cache"] = True
    other_seed["run"]["seed"] = 1
    assert dinomaly_cache.cache_dir(other_seed) == folder
    DinomalyMethod(other_seed, run_dir / "cached", torch.device("cpu")).score("test")
    assert len(built) == 3

    resized = make()  # a setting that changes the encoder outputs gets its own folder
    resized["dinomaly"].update(encoder_cache=True, crop_size=14)
    assert dinomaly_cache.cache_dir(resized) != folder
    regenerated = make()  # synthetic data made with other generator settings keeps its run names
    regenerated["dinomaly"]["encoder_cache"] = True
    regenerated["synthetic"]["seed"] += 1
    assert dinomaly_cache.cache_dir(regenerated) != folder
    stale = folder / "test.tokens.json"  # stale protection: a sidecar with another key is rebuilt, never read
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "key": "something-else"}))
    with pytest.raises(CheckpointError, match="stale"):
        dinomaly_cache.EncodedRuns(dinomaly_cache.cache_paths(cached, "test"), dinomaly_cache.cache_key(cached))
    again = DinomalyMethod(cached, run_dir / "cached", torch.device("cpu")).score("test")
    assert built[-1] == "test.tokens.npy" and len(built) == 4
    pd.testing.assert_frame_equal(again, cached_scores)
