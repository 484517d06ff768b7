"""Paper-size backbone configs against the published checkpoints' numbers, and the paper-size writer.

The numbers below are the published checkpoints' config.json facts, written out here (nothing is
downloaded): the package's configs (weldfilm.models.sizes) must agree with them. Token counts are
measured by a forward of a narrow model with the same patch geometry at the shapes weldfilm feeds.
"""

from __future__ import annotations

import json

import pytest
import torch

from weldfilm.config import validate
from weldfilm.errors import BackboneError
from weldfilm.models import sizes
from weldfilm.models.backbones import FrozenBackbones, load_clip_tokenizer, load_pretrained
from weldfilm.models.sizes import BACKBONE_NAMES, build_config, build_random_backbone, token_count

# facebook/vjepa2-vitl-fpc64-256, MIT/ast-finetuned-audioset-14-14-0.443, facebook/dinov3-vith16plus-pretrain-lvd1689m,
# openai/clip-vit-base-patch32 (text), facebook/dino-vitb8, facebook/dinov2-with-registers-base
PUBLISHED = {
    "vjepa2": dict(cls="VJEPA2Model", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp=4096,
                   patch_size=16, tubelet_size=2, frames_per_clip=64, pred_hidden_size=384, pred_num_hidden_layers=12,
                   pred_num_attention_heads=12, pred_num_mask_tokens=10),
    "ast": dict(cls="ASTModel", hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp=3072,
                patch_size=16, frequency_stride=14, time_stride=14, max_length=1024, num_mel_bins=128),
    "dinov3": dict(cls="DINOv3ViTModel", hidden_size=1280, num_hidden_layers=32, num_attention_heads=20, mlp=5120,
                   patch_size=16, num_register_tokens=4, use_gated_mlp=True, hidden_act="silu"),
    "clip": dict(cls="CLIPTextModelWithProjection", hidden_size=512, num_hidden_layers=12, num_attention_heads=8,
                 mlp=2048, vocab_size=49408, max_position_embeddings=77, projection_dim=512),
    "dino_vitb8": dict(cls="ViTModel", hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp=3072,
                       patch_size=8, image_size=224),
    "dinov2_reg": dict(cls="Dinov2WithRegistersModel", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       mlp=3072, patch_size=14, num_register_tokens=4, image_size=518),
}
# tokens one call returns per sample (per view) at weldfilm's paper shapes
TOKENS = {"vjepa2": 256,  # 32 frames of 64 px: (32 / 2) x (64 / 16)^2, no CLS
          "ast": 659,  # 1024 x 128 mel, strides 14: 73 x 9 patches + CLS + distillation token
          "dinov3": 201,  # 224 px: 14^2 patches + CLS + 4 registers
          "dino_vitb8": 785,  # 224 px: 28^2 patches + CLS
          "dinov2_reg": 789}  # 392 px: 28^2 patches + CLS + 4 registers
PAPER_SHAPES = {"video_frames": 32, "frame_size": 64, "image_size": 224, "audio_mel_bins": 64, "audio_frames": 256,
                "sensor_length": 64}
# narrow width/depth, the paper's patch geometry (strides, registers, vocabulary, positions) unchanged
NARROW = {"vjepa2": dict(hidden_size=48, num_attention_heads=2, num_hidden_layers=1, pred_hidden_size=24,
                         pred_num_hidden_layers=1, pred_num_attention_heads=2),
          "ast": dict(hidden_size=48, num_attention_heads=2, intermediate_size=96, num_hidden_layers=1),
          "dinov3": dict(hidden_size=48, num_attention_heads=2, intermediate_size=96, num_hidden_layers=2),
          "clip": dict(hidden_size=48, num_attention_heads=2, intermediate_size=96, num_hidden_layers=1,
                       projection_dim=16),
          "dino_vitb8": dict(hidden_size=48, num_attention_heads=2, intermediate_size=96, num_hidden_layers=1),
          "dinov2_reg": dict(hidden_size=48, num_attention_heads=2, num_hidden_layers=1)}


def _mlp_width(config) -> int:
    ratio = getattr(config, "mlp_ratio", None)
    return int(config.hidden_size * ratio) if ratio is not None else config.intermediate_size


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_paper_config_matches_the_published_checkpoint(name):
    published = dict(PUBLISHED[name])
    config = build_config(name, "paper", frame_size=64)
    assert sizes.model_class(name).__name__ == published.pop("cls")
    assert isinstance(config, sizes.model_class(name).config_class)
    assert _mlp_width(config) == published.pop("mlp")
    for key, value in published.items():
        assert getattr(config, key) == value, f"{name}.{key}"
    if name in TOKENS:
        image_size = {"dinov3": 224, "dino_vitb8": 224, "dinov2_reg": 392}.get(name)
        assert token_count(name, config, frame_size=64, video_frames=32, image_size=image_size) == TOKENS[name]


def test_paper_models_build_on_meta_with_published_parameter_counts():
    counts = {name: sum(p.numel() for p in build_random_backbone(name, device="meta").parameters())
              for name in BACKBONE_NAMES}
    assert counts["dinov3"] == 840_592_640  # ViT-H+/16 with 4 registers and SwiGLU (the "840M" of DINOv3)
    assert 1.45e9 < sum(counts.values()) < 1.55e9
    video = build_random_backbone("vjepa2", device="meta", frame_size=64)
    assert video.config.crop_size == 64 and video.config.frames_per_clip == 64  # crop = the frame size fed


def test_shape_overrides_and_bad_names():
    config = build_config("ast", "paper", num_hidden_layers=2)
    assert config.num_hidden_layers == 2 and config.time_stride == 14
    assert build_config("ast", "tiny", mel_bins=16, audio_frames=32).num_mel_bins == 16
    with pytest.raises(ValueError, match="not one of"):
        build_config("resnet", "paper")
    with pytest.raises(ValueError, match="not one of"):
        build_config("ast", "huge")
    with pytest.raises(ValueError, match="clip_ids"):
        build_config("clip", "tiny")


@pytest.fixture(scope="module")
def narrow_paper_dir(tmp_path_factory):
    """`weldfilm tiny-backbones --size paper` with the paper configs narrowed (same geometry, small width/depth)."""
    from weldfilm.cli import main

    out = tmp_path_factory.mktemp("paper") / "backbones"
    with pytest.MonkeyPatch.context() as patch:
        for name, narrow in NARROW.items():
            patch.setitem(sizes.CONFIGS["paper"], name, {**sizes.CONFIGS["paper"][name], **narrow})
        assert main(["tiny-backbones", "--size", "paper", "--out", str(out), "--frame-size", "64"]) == 0
    return out


def test_paper_size_folders_load_as_real_checkpoints_and_give_paper_token_shapes(narrow_paper_dir):
    summary = json.loads((narrow_paper_dir / "summary.json").read_text())
    assert summary["size"] == "paper" and set(summary["backbones"]) == set(BACKBONE_NAMES)
    paths = {key: str(narrow_paper_dir / folder) for key, folder in
             (("video", "vjepa2"), ("audio", "ast"), ("image", "dinov3"), ("clip", "clip"),
              ("m3dm_rgb", "dino_vitb8"), ("dinomaly_encoder", "dinov2_reg"))}
    cfg = validate({"preprocess": PAPER_SHAPES, "backbones": {"source": "pretrained", **paths}})
    cfg["causal_film"]["result_layers"] = [1, 2]
    backbones = FrozenBackbones.from_config(cfg, "cpu")
    shapes = backbones.token_shapes()
    assert shapes["video_tokens"] == [TOKENS["vjepa2"], 48]
    assert shapes["audio_tokens"] == [TOKENS["ast"], 48]  # 64 x 256 mel stretched to 1024 x 128
    assert shapes["image_tokens"] == [5, 2, TOKENS["dinov3"], 48]
    assert backbones.clip_model.config.vocab_size == 49408 and len(backbones.tokenizer) == 49408
    assert backbones.text_embedding("a normal weld").shape == (16,)
    from transformers import Dinov2WithRegistersModel, ViTModel

    rgb = load_pretrained(paths["m3dm_rgb"], ViTModel)
    encoder = load_pretrained(paths["dinomaly_encoder"], Dinov2WithRegistersModel)
    with torch.no_grad():
        assert rgb(pixel_values=torch.zeros(1, 3, 224, 224)).last_hidden_state.shape[1] == TOKENS["dino_vitb8"]
        assert encoder(pixel_values=torch.zeros(1, 3, 392, 392)).last_hidden_state.shape[1] == TOKENS["dinov2_reg"]


def test_paper_clip_tokenizer_is_padded_to_clips_vocabulary_not_a_two_token_one(narrow_paper_dir):
    tokenizer = load_clip_tokenizer(narrow_paper_dir / "clip", vocab_size=49408)
    assert tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [49406, 49407]
    ids = tokenizer("A normal weld with porosity.")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids)[1:4] == ["a</w>", "normal</w>", "weld</w>"]
    assert all(not tokenizer.convert_ids_to_tokens(i).startswith("<|unused_") for i in ids)
    vocab = json.loads((narrow_paper_dir / "clip" / "vocab.json").read_text())
    assert len(vocab) == 49408 and sum(token.startswith("<|unused_") for token in vocab) > 48000
    with pytest.raises(BackboneError, match="vocab_size"):
        load_clip_tokenizer(narrow_paper_dir / "clip", vocab_size=579)


def test_in_memory_builder_gives_the_written_weights(tmp_path):
    from transformers import DINOv3ViTModel

    from weldfilm.models.tiny import write_backbones

    write_backbones(tmp_path / "tiny", "tiny", seed=3, frame_size=32, video_frames=4, image_size=64, mel_bins=16,
                    audio_frames=32, progress=False)
    written = load_pretrained(tmp_path / "tiny" / "dinov3", DINOv3ViTModel).state_dict()
    rng_before = torch.random.get_rng_state()
    built = build_random_backbone("dinov3", "tiny", seed=3, image_size=64).state_dict()
    assert torch.equal(rng_before, torch.random.get_rng_state())  # the global RNG is left alone
    assert written.keys() == built.keys() and all(torch.equal(written[k], built[k]) for k in written)


def test_paper_shapes_size_has_the_paper_depth_and_geometry_at_tiny_width():
    for name in ("vjepa2", "ast", "dinov3", "dino_vitb8", "dinov2_reg"):
        config = build_config(name, "paper_shapes", frame_size=64)
        published = PUBLISHED[name]
        assert config.hidden_size == 32 and config.num_hidden_layers == published["num_hidden_layers"], name
        assert config.patch_size == published["patch_size"], name
        if name in TOKENS:
            image_size = {"dinov3": 224, "dino_vitb8": 224, "dinov2_reg": 392}.get(name)
            assert token_count(name, config, frame_size=64, video_frames=32, image_size=image_size) == TOKENS[name]


def test_gpu_check_without_cuda_measures_nothing_and_exits_0(monkeypatch, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--device", "cuda"]) == 0
    assert "no CUDA device here" in capsys.readouterr().out
    assert gpu_check.main(["--device", "cpu"]) == 2  # the paper-size models on a CPU need --quick
