"""Tiny random-init backbones of the paper's model classes, for runs and tests without checkpoints.

``write_tiny_backbones`` saves, with ``save_pretrained``, one directory per backbone below ``out_dir``:

| folder | class | stands in for |
|---|---|---|
| ``vjepa2`` | ``VJEPA2Model`` (patch 16, tubelet 2, ``crop_size = frame_size``) | facebook/vjepa2-vitl-fpc64-256 |
| ``ast`` | ``ASTModel`` (patch 16, strides 10, ``max_length x num_mel_bins`` = the dataset mel) | MIT/ast-finetuned-audioset-14-14-0.443 |
| ``dinov3`` | ``DINOv3ViTModel`` (patch 16, 4 registers, 4 layers -> 5 hidden states) | DINOv3 ViT-H/16+ |
| ``clip`` | ``CLIPTextModelWithProjection`` + a real CLIP BPE tokenizer | CLIP ViT-B/32 text tower |
| ``dino_vitb8`` | ``ViTModel`` (patch 8, 224 px) | facebook/dino-vitb8 (M3DM) |
| ``dinov2_reg`` | ``Dinov2WithRegistersModel`` (patch 14, 4 registers) | dinov2-with-registers-base (Dinomaly) |

Each folder also gets the processor JSON the real checkpoint ships (ImageNet mean/std for the
vision models, AudioSet mean/std for AST), so input normalisation follows the same code path.
The tokenizer is a byte-level BPE in CLIP's format (lower-casing, ``</w>`` word suffix,
``<|startoftext|>``/``<|endoftext|>``), trained offline on a small built-in corpus of welding words;
the text model's ``vocab_size`` equals its size. Everything is deterministic for a seed, and the
folder is written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
AUDIOSET_MEAN = -4.2677393  # ASTFeatureExtractor defaults (MIT/ast-finetuned-audioset-*)
AUDIOSET_STD = 4.5689974
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
CLIP_MAX_LENGTH = 77
# CLIP's pre-tokenizer split pattern (contractions, letter runs, single digits, punctuation runs).
CLIP_SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

WELDING_CORPUS = """
a normal weld. a good weld with a smooth even bead. a photo of a normal weld seam.
a defective weld. an anomalous weld with porosity. excessive penetration of the weld root.
burnthrough of the plate. porosity with excessive penetration. undercut at the weld toe.
overlap of the weld metal. lack of fusion between weld and plate. excessive convexity of the bead.
spatter around the weld. warping of the plate. crater cracks at the end of the weld.
arc welding with shielding gas, wire feed, welding current and voltage on steel plates.
fillet weld and butt weld on a plane plate, robot speed, travel speed, heat input.
"""
TINY_DIRS = ("vjepa2", "ast", "dinov3", "clip", "dino_vitb8", "dinov2_reg")
_VISION = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)


def _train_bpe_merges(words: list[tuple[str, ...]], max_merges: int) -> list[tuple[str, str]]:
    """Plain BPE on a list of symbol tuples: repeatedly merge the most frequent adjacent pair.

    Ties go to the lexicographically smallest pair, so the result is the same in every process
    (the ``tokenizers`` trainer breaks ties by hash order, which differs from run to run).
    """
    from collections import Counter

    vocabulary = Counter(words)
    merges = []
    for _ in range(max_merges):
        pairs = Counter()
        for word, count in vocabulary.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        if pairs[best] < 2:
            break
        merges.append(best)
        merged = Counter()
        for word, count in vocabulary.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        vocabulary = merged
    return merges


def build_clip_tokenizer(max_merges: int = 256):
    """A CLIP-format byte-level BPE (``tokenizers.Tokenizer``) trained on the built-in corpus.

    Vocabulary layout as CLIP's: the 256 byte symbols, the same with ``</w>``, one token per merge,
    then ``<|startoftext|>`` and ``<|endoftext|>``.
    """
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    pieces = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(WELDING_CORPUS))
    words = [tuple(piece[:-1]) + (piece[-1] + "</w>",) for piece, _ in pieces]
    merges = _train_bpe_merges(words, max_merges)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [symbol + "</w>" for symbol in alphabet] + [a + b for a, b in merges] + [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=EOS_TOKEN, continuing_subword_prefix="",
                              end_of_word_suffix="</w>", fuse_unk=False))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([BOS_TOKEN, EOS_TOKEN])
    tokenizer.post_processor = processors.RobertaProcessing(
        (EOS_TOKEN, vocab[EOS_TOKEN]), (BOS_TOKEN, vocab[BOS_TOKEN]), trim_offsets=False, add_prefix_space=False)
    return tokenizer


def _save_clip_tokenizer(tokenizer, directory: Path) -> None:
    tokenizer.save(str(directory / "tokenizer.json"))
    tokenizer.model.save(str(directory))  # vocab.json + merges.txt
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": CLIP_MAX_LENGTH, "bos_token": BOS_TOKEN,
              "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": EOS_TOKEN}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _image_processor_json(size: int, processor_class: str) -> dict:
    return {"image_processor_type": processor_class, "do_normalize": True, "do_rescale": True,
            "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD, "size": {"height": size, "width": size}}


def _tiny_models(frame_size: int, video_frames: int, image_size: int, mel_bins: int, audio_frames: int,
                 clip_vocab_size: int, bos_id: int, eos_id: int) -> dict:
    """folder -> (model class, config, processor file name or None, processor JSON)."""
    import transformers as tf

    return {
        "vjepa2": (tf.VJEPA2Model, tf.VJEPA2Config(
            **{k: v for k, v in _VISION.items() if k != "intermediate_size"}, mlp_ratio=2.0, num_hidden_layers=2,
            patch_size=16, tubelet_size=2, crop_size=frame_size, frames_per_clip=video_frames,
            pred_hidden_size=32, pred_num_hidden_layers=1, pred_num_attention_heads=2, pred_mlp_ratio=2.0),
            "video_preprocessor_config.json",
            {"video_processor_type": "VJEPA2VideoProcessor", "do_normalize": True, "do_rescale": True,
             "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD, "crop_size": {"height": frame_size,
                                                                                   "width": frame_size}}),
        "ast": (tf.ASTModel, tf.ASTConfig(**_VISION, num_hidden_layers=2, patch_size=16, frequency_stride=10,
                                          time_stride=10, max_length=audio_frames, num_mel_bins=mel_bins),
                "preprocessor_config.json",
                {"feature_extractor_type": "ASTFeatureExtractor", "do_normalize": True, "mean": AUDIOSET_MEAN,
                 "std": AUDIOSET_STD, "max_length": audio_frames, "num_mel_bins": mel_bins}),
        "dinov3": (tf.DINOv3ViTModel, tf.DINOv3ViTConfig(**_VISION, num_hidden_layers=4, patch_size=16,
                                                          image_size=image_size, num_register_tokens=4),
                   "preprocessor_config.json", _image_processor_json(image_size, "DINOv3ViTImageProcessorFast")),
        "clip": (tf.CLIPTextModelWithProjection, tf.CLIPTextConfig(
            **_VISION, num_hidden_layers=2, projection_dim=16, vocab_size=clip_vocab_size,
            max_position_embeddings=CLIP_MAX_LENGTH, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id),
            None, None),
        "dino_vitb8": (tf.ViTModel, tf.ViTConfig(**_VISION, num_hidden_layers=4, patch_size=8, image_size=224),
                       "preprocessor_config.json", _image_processor_json(224, "ViTImageProcessor")),
        "dinov2_reg": (tf.Dinov2WithRegistersModel, tf.Dinov2WithRegistersConfig(
            hidden_size=32, num_attention_heads=2, mlp_ratio=2, num_hidden_layers=4, patch_size=14,
            image_size=518, num_register_tokens=4),
            "preprocessor_config.json", _image_processor_json(224, "BitImageProcessor")),
    }


def write_tiny_backbones(out_dir, seed: int = 0, frame_size: int = 64, video_frames: int = 32, image_size: int = 224,
                         mel_bins: int = 64, audio_frames: int = 256) -> dict:
    """Write the six tiny backbones below ``out_dir`` (replacing it); return a summary (also saved as summary.json)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = build_clip_tokenizer()
    models = _tiny_models(frame_size, video_frames, image_size, mel_bins, audio_frames,
                          clip_vocab_size=tokenizer.get_vocab_size(), bos_id=tokenizer.token_to_id(BOS_TOKEN),
                          eos_id=tokenizer.token_to_id(EOS_TOKEN))
    summary = {"seed": seed, "sizes": {"frame_size": frame_size, "video_frames": video_frames,
                                       "image_size": image_size, "mel_bins": mel_bins, "audio_frames": audio_frames},
               "backbones": {}}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        for index, (name, (model_class, config, processor_file, processor_json)) in enumerate(models.items()):
            torch.manual_seed(seed * 1000 + index)
            model = model_class(config).eval()
            target = tmp / name
            model.save_pretrained(target)
            if processor_file:
                _write_json(target / processor_file, processor_json)
            if name == "clip":
                _save_clip_tokenizer(tokenizer, target)
            summary["backbones"][name] = {"class": model_class.__name__, "hidden_size": config.hidden_size,
                                          "parameters": sum(p.numel() for p in model.parameters())}
        _write_json(tmp / "summary.json", summary)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return summary


def add_cli_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="folder to write (replaced): DIR/{%s}" % ",".join(TINY_DIRS))
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    parser.add_argument("--frame-size", type=int, default=64, help="video frame size = V-JEPA2 crop_size")
    parser.add_argument("--video-frames", type=int, default=32, help="frames per clip of V-JEPA2")
    parser.add_argument("--image-size", type=int, default=224, help="DINOv3 image size")
    parser.add_argument("--mel-bins", type=int, default=64, help="AST num_mel_bins")
    parser.add_argument("--audio-frames", type=int, default=256, help="AST max_length (time frames)")


def cli(args) -> int:
    summary = write_tiny_backbones(args.out, seed=args.seed, frame_size=args.frame_size,
                                   video_frames=args.video_frames, image_size=args.image_size,
                                   mel_bins=args.mel_bins, audio_frames=args.audio_frames)
    for name, info in summary["backbones"].items():
        print(f"{name}: {info['class']} ({info['parameters']} parameters)")
    return 0
