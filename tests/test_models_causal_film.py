"""Causal-FiLM modules on random features: shapes, ablation switches, loss terms and the anomaly score."""

from __future__ import annotations

import math

import pytest
import torch

from weldfilm.config import validate
from weldfilm.errors import ConfigError, DataError
from weldfilm.methods.causal_film.model import CausalFiLMHead, CausalFiLMModel
from weldfilm.methods.causal_film.encoders import GeM, RobustResultEncoder, pool_views, view_mask
from weldfilm.methods.causal_film.losses import CausalFiLMLoss, compute_anomaly_score, gram_matrix

DIMS = {"video": 12, "audio": 10, "image": 8, "clip": 6, "image_prefix_tokens": 3, "sensor": 6}
B, LV, LA, N, L, TS = 3, 5, 4, 4, 7, 16


def tiny_cfg(**changes) -> dict:
    cfg = validate({})
    cfg["causal_film"].update({"d_model": 16, "sensor_hidden_dim": 8, "projector_hidden": 12, **changes})
    return cfg


def features(seed: int = 0, num_images=(4, 2, 1)) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "video_tokens": torch.randn(B, LV, DIMS["video"], generator=gen),
        "audio_tokens": torch.randn(B, LA, DIMS["audio"], generator=gen),
        "image_tokens": torch.randn(B, N, 2, L, DIMS["image"], generator=gen),
        "num_images": torch.tensor(num_images),
        "sensor": torch.randn(B, TS, 6, generator=gen),
        "label": torch.tensor([0, 1, 0]),
        "class_label": torch.tensor([0, 3, 0]),
        "sample_id": ["a/1", "b/2", "c/3"],
    }


def model_for(**changes) -> CausalFiLMModel:
    torch.manual_seed(0)
    return CausalFiLMModel(tiny_cfg(**changes)["causal_film"], DIMS).eval()


def test_forward_shapes_and_scores():
    model = model_for()
    out = model(features())
    assert out["z_res"].shape == (B, 16) and out["z_pred"].shape == (B, 16)
    assert out["gamma"].shape == (B, 1, 16) and out["beta"].shape == (B, 1, 16)
    scores = model.anomaly_scores(features())
    assert scores.shape == (B,) and torch.isfinite(scores).all()
    assert not torch.allclose(out["gamma"], torch.ones_like(out["gamma"]))


def test_missing_config_key_is_a_config_error():
    with pytest.raises(ConfigError, match="projector_hidden"):
        CausalFiLMModel({"d_model": 16}, DIMS)


def test_no_film_gives_identity_modulation_but_keeps_modulator():
    model = model_for(use_film=False)
    out = model(features())
    assert torch.equal(out["gamma"], torch.ones(B, 1, 16)) and torch.equal(out["beta"], torch.zeros(B, 1, 16))
    assert model.modulator is not None


def test_no_sensor_removes_modulator_and_needs_no_sensor():
    model = model_for(use_sensor=False)
    batch = features()
    del batch["sensor"]
    out = model(batch)
    assert model.modulator is None
    assert torch.equal(out["gamma"], torch.ones(B, 1, 16)) and torch.equal(out["beta"], torch.zeros(B, 1, 16))


def test_sensor_changes_z_pred_only_with_film():
    base, other = features(), features()
    other["sensor"] = other["sensor"] + 1.0
    with_film, without_film = model_for(), model_for(use_film=False)
    assert not torch.allclose(with_film(base)["z_pred"], with_film(other)["z_pred"])
    assert torch.allclose(without_film(base)["z_pred"], without_film(other)["z_pred"])


@pytest.mark.parametrize("branch, unused", [("video_only", "audio_tokens"), ("audio_only", "video_tokens")])
def test_single_process_branch_ignores_the_other_modality(branch, unused):
    model = model_for(process_branch=branch)
    base, other = features(), features()
    other[unused] = torch.randn_like(other[unused])
    assert torch.allclose(model(base)["z_pred"], model(other)["z_pred"])
    absent = "audio_projector" if branch == "video_only" else "video_projector"
    assert getattr(model, absent) is None


def test_gru_sensor_encoder_runs_and_has_no_mamba():
    model = model_for(sensor_encoder="gru")
    assert isinstance(model.modulator.temporal, torch.nn.GRU)
    assert model(features())["gamma"].shape == (B, 1, 16)


def test_result_pooling_mean_has_no_gem_parameter():
    assert model_for(result_pooling="mean").result_encoder.gem is None
    assert model_for().result_encoder.gem.p.item() == pytest.approx(6.0)


def test_padded_views_are_excluded_and_include_option_restores_them():
    model = model_for()
    base, other = features(), features()
    other["image_tokens"][1, 2:] = torch.randn_like(other["image_tokens"][1, 2:]) * 5  # padded views of sample 1
    assert torch.allclose(model(base)["z_res"], model(other)["z_res"])
    including = model_for(view_padding="include")
    assert not torch.allclose(including(base)["z_res"][1], including(other)["z_res"][1])


def test_sample_without_images_is_rejected_by_name():
    with pytest.raises(DataError, match="c/3"):
        model_for()(features(num_images=(4, 2, 0)))


def test_view_pooling_max_and_mean():
    per_view = torch.tensor([[[1.0, -2.0], [3.0, -1.0], [100.0, 100.0]]])
    mask = view_mask(torch.tensor([2]), 3)
    assert torch.equal(pool_views(per_view, mask, "max"), torch.tensor([[3.0, -1.0]]))
    assert torch.equal(pool_views(per_view, mask, "mean"), torch.tensor([[2.0, -1.5]]))


def test_drop_special_tokens_ignores_cls_and_registers():
    torch.manual_seed(0)
    encoder = RobustResultEncoder(8, 16, drop_special_tokens=True, num_special_tokens=3).eval()
    hidden = torch.randn(2, 2, 7, 8)
    changed = hidden.clone()
    changed[:, :, :3] += 10.0
    assert torch.allclose(encoder(hidden), encoder(changed))
    keeping = RobustResultEncoder(8, 16).eval()
    assert not torch.allclose(keeping(hidden), keeping(changed))


def test_gem_matches_formula():
    x = torch.rand(2, 5, 3) + 0.1
    expected = x.pow(6.0).mean(dim=1).pow(1 / 6.0)
    assert torch.allclose(GeM(6.0)(x), expected)


def test_feature_regularisation_only_in_training():
    model = model_for(feature_noise=0.5, feature_mask_ratio=0.5)
    batch = features()
    assert torch.equal(model(batch)["z_pred"], model(batch)["z_pred"])
    model.train()
    torch.manual_seed(1)
    first = model(batch)["z_pred"]
    torch.manual_seed(2)
    assert not torch.allclose(first, model(batch)["z_pred"])


def test_anomaly_score_formula():
    z_res = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    z_pred = torch.tensor([[0.0, 1.0, 0.5, 0.0]])
    cos = 0.0
    diffs = sorted([1.0, 1.0, 0.5, 0.0], reverse=True)
    assert compute_anomaly_score(z_res, z_pred, 0.5).item() == pytest.approx((1 - cos) + 10 * (diffs[0] + diffs[1]) / 2)
    assert compute_anomaly_score(z_res, z_pred, 0.75).item() == pytest.approx(1 + 10 * sum(diffs[:3]) / 3)
    assert compute_anomaly_score(z_res, z_res, 0.5).item() == pytest.approx(0.0, abs=1e-6)


def test_loss_terms_against_hand_computed_values():
    z_res = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z_pred = torch.tensor([[1.0, 0.05], [1.0, 2.0]])
    loss = CausalFiLMLoss(2, lambda_l1=2.0, lambda_gram=3.0, top_k_ratio=0.5)
    terms = loss(z_res, z_pred)
    cos = [1 / math.sqrt(1 + 0.0025), 4 / (math.sqrt(5) * 2)]
    assert terms["cos"].item() == pytest.approx(sum(1 - c for c in cos) / 2, rel=1e-5)
    # smooth L1, beta 0.1: |d| < 0.1 -> 0.5 d^2 / 0.1, else |d| - 0.05; top-1 per sample of [0, 0.0125] and [0.95, 0]
    assert terms["l1"].item() == pytest.approx((0.0125 + 0.95) / 2, rel=1e-5)
    g_res = torch.tensor([[1.0, 0.0], [0.0, 4.0]]) / 2
    g_pred = torch.tensor([[1.0025, 1.1], [1.1, 5.0]]) / 2
    assert terms["gram"].item() == pytest.approx(((g_res - g_pred) ** 2).mean().item(), rel=1e-5)
    expected_total = terms["cos"] + 2.0 * terms["l1"] + 3.0 * terms["gram"]
    assert terms["loss"].item() == pytest.approx(expected_total.item())
    assert "text" not in terms and loss.text_term_active is False
    full = CausalFiLMLoss(2, top_k_ratio=1.0)(z_res, z_pred)
    assert full["l1"].item() == pytest.approx((0.0125 + 0.95) / 4, rel=1e-5)
    assert torch.allclose(gram_matrix(z_res), g_res)


def test_text_term_is_cosine_distance_to_the_prompt_embedding():
    embedding = torch.tensor([3.0, 0.0, 4.0])
    loss = CausalFiLMLoss(2, lambda_text=0.5, text_embedding=embedding)
    with torch.no_grad():
        for module in loss.text_head:
            if isinstance(module, torch.nn.Linear):
                module.weight.zero_()
                module.bias.zero_()
        loss.text_head[-1].bias.copy_(torch.tensor([0.0, 1.0, 0.0]))  # head output = e_y: cos to (0.6, 0, 0.8) = 0
    z = torch.randn(4, 2)
    terms = loss(z, z)
    assert loss.text_term_active
    assert terms["text"].item() == pytest.approx(1.0)
    assert terms["loss"].item() == pytest.approx(terms["cos"].item() + terms["l1"].item() + terms["gram"].item() + 0.5)


def test_head_training_losses_backpropagate_and_describe():
    cfg = tiny_cfg()
    head = CausalFiLMHead.from_config(cfg, {k: v for k, v in DIMS.items() if k != "sensor"},
                                      text_embedding=torch.randn(DIMS["clip"]))
    head.train()
    terms = head.training_losses(features())
    assert set(terms) == {"cos", "l1", "gram", "text", "loss"}
    terms["loss"].backward()
    assert head.model.modulator.head.weight.grad is not None
    assert head.criterion.text_head[0].weight.grad is not None
    head.eval()
    assert head.anomaly_scores(features()).shape == (B,)
    info = head.describe()
    assert info["text_term_active"] is True and "mambapy" in info["sensor_scan"]
    no_text = CausalFiLMHead.from_config(cfg, DIMS)
    assert no_text.describe()["text_term_active"] is False and "text" not in no_text.training_losses(features())
