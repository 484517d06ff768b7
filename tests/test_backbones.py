"""Tiny backbones: written with the paper's classes, loaded offline, input adaptation checked, bad folders rejected."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from weldfilm.config import validate
from weldfilm.errors import BackboneError, ConfigError
from weldfilm.models.backbones import FrozenBackbones, load_clip_tokenizer, load_pretrained, resize_mel_for_ast
from weldfilm.models.tiny import write_tiny_backbones

SIZES = {"frame_size": 32, "video_frames": 4, "image_size": 64, "mel_bins": 16, "audio_frames": 32}
PREPROCESS = {"video_frames": 4, "frame_size": 32, "image_size": 64, "audio_mel_bins": 16, "audio_frames": 32,
              "sensor_length": 32}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("backbones") / "tiny"
    write_tiny_backbones(out, seed=0, **SIZES)
    return out


def config_for(tiny_dir, **causal_film) -> dict:
    paths = {name: str(tiny_dir / folder) for name, folder in
             (("video", "vjepa2"), ("audio", "ast"), ("image", "dinov3"), ("clip", "clip"))}
    cfg = validate({"preprocess": PREPROCESS, "backbones": paths})
    cfg["causal_film"].update({"d_model": 16, "sensor_hidden_dim": 8, "projector_hidden": 16, **causal_film})
    return cfg


@pytest.fixture(scope="module")
def backbones(tiny_dir):
    return FrozenBackbones.from_config(config_for(tiny_dir), "cpu")


def fake_batch(batch_size: int = 2) -> dict:
    gen = torch.Generator().manual_seed(0)
    return {"video": torch.rand(batch_size, 4, 3, 32, 32, generator=gen),
            "audio": torch.randn(batch_size, 1, 16, 32, generator=gen) * 20 - 40,
            "post_weld_images": torch.rand(batch_size, 5, 3, 64, 64, generator=gen),
            "num_images": torch.tensor([5, 2][:batch_size]), "sensor": torch.randn(batch_size, 32, 6, generator=gen),
            "label": torch.tensor([0, 1][:batch_size]), "class_label": torch.tensor([0, 4][:batch_size]),
            "sample_id": ["cfg/11-18-22-0001-00", "cfg/11-18-22-0002-04"][:batch_size]}


def test_tiny_folders_load_with_the_paper_classes(tiny_dir):
    from transformers import AutoModel, AutoTokenizer

    expected = {"vjepa2": "VJEPA2Model", "ast": "ASTModel", "dinov3": "DINOv3ViTModel", "dino_vitb8": "ViTModel",
                "dinov2_reg": "Dinov2WithRegistersModel", "clip": "CLIPTextModel"}
    for folder, class_name in expected.items():
        model = AutoModel.from_pretrained(tiny_dir / folder, local_files_only=True)
        assert type(model).__name__ == class_name
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "clip", local_files_only=True)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("A normal weld")["input_ids"])
    assert tokens == ["<|startoftext|>", "a</w>", "normal</w>", "weld</w>", "<|endoftext|>"]
    assert len(tokenizer) == json.loads((tiny_dir / "clip" / "config.json").read_text())["vocab_size"]
    assert AutoModel.from_pretrained(tiny_dir / "dinov3", local_files_only=True).config.num_hidden_layers >= 4
    from transformers import Dinov2WithRegistersModel, ViTModel

    assert load_pretrained(tiny_dir / "dino_vitb8", ViTModel).config.patch_size == 8
    baseline_encoder = load_pretrained(tiny_dir / "dinov2_reg", Dinov2WithRegistersModel)
    assert baseline_encoder.config.patch_size == 14 and baseline_encoder.config.num_register_tokens == 4
    assert not any(p.requires_grad for p in baseline_encoder.parameters()) and not baseline_encoder.training


def test_token_shapes_dims_and_feature_batch(backbones):
    assert backbones.dims == {"video": 32, "audio": 32, "image": 32, "clip": 16, "image_prefix_tokens": 5}
    features = backbones.extract(fake_batch())
    assert features["video_tokens"].shape == (2, 8, 32)  # (4 frames / tubelet 2) x (32/16)^2 patches
    assert features["audio_tokens"].shape == (2, 4, 32)  # 1 x 2 patches + CLS + distillation token
    assert features["image_tokens"].shape == (2, 5, 2, 21, 32)  # CLS + 4 registers + (64/16)^2 patches
    assert features["sample_id"] == fake_batch()["sample_id"] and features["num_images"].tolist() == [5, 2]
    shapes = backbones.token_shapes()
    assert shapes["video_tokens"] == [8, 32] and shapes["image_tokens"] == [5, 2, 21, 32]
    assert backbones.input_adaptation()["image"]["normalisation"]["source"] == "preprocessor_config.json"
    fingerprint = backbones.fingerprint()
    assert fingerprint["image"]["class"] == "DINOv3ViTModel" and fingerprint["image"]["weight_bytes"] > 0


def test_image_tokens_are_the_configured_hidden_states(backbones):
    images = fake_batch()["post_weld_images"][:1, :1]
    pixels = (images[:, 0] - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(3, 1, 1)
    with torch.no_grad():
        hidden = backbones.image_model(pixel_values=pixels, output_hidden_states=True).hidden_states
    tokens = backbones.image_tokens(images)
    assert torch.allclose(tokens[0, 0, 0], hidden[1][0], atol=1e-5)
    assert torch.allclose(tokens[0, 0, 1], hidden[3][0], atol=1e-5)


def test_features_feed_the_causal_film_head(tiny_dir, backbones):
    from weldfilm.methods.causal_film.model import CausalFiLMHead

    cfg = config_for(tiny_dir)
    embedding = backbones.text_embedding(cfg["loss"]["text_prompt"])
    assert embedding.shape == (16,) and torch.equal(embedding, backbones.text_embedding("a normal weld"))
    head = CausalFiLMHead.from_config(cfg, backbones.dims, text_embedding=embedding)
    features = backbones.extract(fake_batch())
    assert torch.isfinite(head.training_losses(features)["loss"])
    assert head.eval().anomaly_scores(features).shape == (2,)


def test_ast_input_is_resized_and_transposed_input_rejected(backbones):
    with pytest.raises(BackboneError, match="transposed"):
        backbones.audio_tokens(torch.randn(1, 1, 32, 16))  # (B, 1, T, F) instead of (B, 1, F, T)
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 4, 8)  # rises along time (dim 3)
    resized = resize_mel_for_ast(ramp, mel_bins=4, max_length=16, num_mel_bins=6)
    assert resized.shape == (1, 16, 6)
    assert torch.all(resized[0, 1:, 0] >= resized[0, :-1, 0]) and torch.allclose(resized[0, 5], resized[0, 5, :1])


def test_video_frame_size_must_equal_crop_size(tiny_dir, backbones):
    with pytest.raises(BackboneError, match="crop_size"):
        backbones.video_tokens(torch.rand(1, 4, 3, 48, 48))
    from transformers import VJEPA2Model

    assert load_pretrained(tiny_dir / "vjepa2", VJEPA2Model, crop_size=48).config.crop_size == 48


def test_bad_folders_are_rejected_by_name(tiny_dir, tmp_path):
    from transformers import ASTModel, DINOv3ViTModel

    with pytest.raises(BackboneError, match="does not exist"):
        load_pretrained(tmp_path / "nowhere", ASTModel)
    no_weights = tmp_path / "ast_without_weights"
    shutil.copytree(tiny_dir / "ast", no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(BackboneError, match=f"{no_weights}.*no weights"):
        load_pretrained(no_weights, ASTModel)
    with pytest.raises(BackboneError, match="expected DINOv3ViTModel"):
        load_pretrained(tiny_dir / "ast", DINOv3ViTModel)


def test_tokenizer_must_fit_the_text_model(tiny_dir, tmp_path):
    with pytest.raises(BackboneError, match="vocab_size"):
        load_clip_tokenizer(tiny_dir / "clip", vocab_size=49408)
    no_tokenizer = tmp_path / "clip"
    shutil.copytree(tiny_dir / "clip", no_tokenizer)
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (no_tokenizer / name).unlink()
    with pytest.raises(BackboneError, match="no tokenizer"):
        load_clip_tokenizer(no_tokenizer, vocab_size=10)


def test_result_layers_out_of_range_is_a_config_error(tiny_dir):
    with pytest.raises(ConfigError, match="result_layers"):
        FrozenBackbones.from_config(config_for(tiny_dir, result_layers=[20, 31]), "cpu")


def test_full_clip_checkpoint_loads_its_text_tower_and_shape_mismatch_is_rejected(tiny_dir, tmp_path):
    from transformers import CLIPConfig, CLIPModel, CLIPTextModelWithProjection

    text = json.loads((tiny_dir / "clip" / "config.json").read_text())
    text_config = {k: text[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                        "intermediate_size", "vocab_size", "eos_token_id")}
    vision_config = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
                     "image_size": 32, "patch_size": 16}
    for name, text_projection in (("full_clip", 8), ("inconsistent_clip", 512)):
        config = CLIPConfig(text_config={**text_config, "projection_dim": text_projection},
                            vision_config=vision_config, projection_dim=8)
        CLIPModel(config).save_pretrained(tmp_path / name)
    model = load_pretrained(tmp_path / "full_clip", CLIPTextModelWithProjection)
    assert isinstance(model, CLIPTextModelWithProjection) and model.config.projection_dim == 8
    with pytest.raises(BackboneError, match="inconsistent_clip.*loading failed"):  # else re-initialised at random
        load_pretrained(tmp_path / "inconsistent_clip", CLIPTextModelWithProjection)


def test_writer_is_deterministic_and_cli_works(tmp_path):
    from weldfilm.cli import main

    sizes = ["--frame-size", "32", "--video-frames", "4", "--image-size", "64", "--mel-bins", "16",
             "--audio-frames", "32"]
    assert main(["tiny-backbones", "--out", str(tmp_path / "a"), "--seed", "3", *sizes]) == 0
    write_tiny_backbones(tmp_path / "b", seed=3, **SIZES)
    write_tiny_backbones(tmp_path / "c", seed=4, **SIZES)
    for folder in ("vjepa2", "dinov3", "clip"):
        first = (tmp_path / "a" / folder / "model.safetensors").read_bytes()
        assert first == (tmp_path / "b" / folder / "model.safetensors").read_bytes()
        assert first != (tmp_path / "c" / folder / "model.safetensors").read_bytes()
    assert (tmp_path / "a/clip/tokenizer.json").read_text() == (tmp_path / "b/clip/tokenizer.json").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
