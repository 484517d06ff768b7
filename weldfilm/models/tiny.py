"""Random-init backbones of the paper's model classes, for runs and tests without checkpoints.

``write_backbones(out_dir, size)`` saves, with ``save_pretrained``, one directory per backbone below
``out_dir``; ``size="tiny"`` (``write_tiny_backbones``, the default of ``weldfilm tiny-backbones``) writes
small stand-ins, ``size="paper"`` (``weldfilm tiny-backbones --size paper``) the published architectures
(~1.5 B parameters, ~6 GB in fp32). The architectures are data in ``weldfilm.models.sizes``:

| folder | class | tiny | stands in for (paper size) |
|---|---|---|---|
| ``vjepa2`` | ``VJEPA2Model`` | patch 16, tubelet 2, ``crop_size = frame_size`` | facebook/vjepa2-vitl-fpc64-256 |
| ``ast`` | ``ASTModel`` | patch 16, strides 10, ``max_length x num_mel_bins`` = the dataset mel | MIT/ast-finetuned-audioset-14-14-0.443 |
| ``dinov3`` | ``DINOv3ViTModel`` | patch 16, 4 registers, 4 layers -> 5 hidden states | DINOv3 ViT-H+/16 |
| ``clip`` | ``CLIPTextModelWithProjection`` + a real CLIP BPE tokenizer | 2 layers | CLIP ViT-B/32 text tower |
| ``dino_vitb8`` | ``ViTModel`` | patch 8, 224 px | facebook/dino-vitb8 (M3DM) |
| ``dinov2_reg`` | ``Dinov2WithRegistersModel`` | patch 14, 4 registers | dinov2-with-registers-base (Dinomaly) |

Each folder also gets the processor JSON the real checkpoint ships (ImageNet mean/std for the
vision models, AudioSet mean/std for AST), so input normalisation follows the same code path.
The tokenizer is a byte-level BPE in CLIP's format (lower-casing, ``</w>`` word suffix,
``<|startoftext|>``/``<|endoftext|>``), trained offline on a small built-in corpus of welding words;
the text model's ``vocab_size`` equals its size (at paper size the vocabulary is padded with unused
entries to CLIP's 49408). Everything is deterministic for a seed, and the folder is written to a
temporary sibling and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from weldfilm.models.sizes import (BACKBONE_NAMES, CLASS_NAMES, CLIP_MAX_LENGTH, CLIP_VOCAB_SIZE, SIZES,
                                   build_random_backbone)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
AUDIOSET_MEAN = -4.2677393  # ASTFeatureExtractor defaults (MIT/ast-finetuned-audioset-*)
AUDIOSET_STD = 4.5689974
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
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


def build_clip_tokenizer(max_merges: int = 256, vocab_size: int | None = None):
    """A CLIP-format byte-level BPE (``tokenizers.Tokenizer``) trained on the built-in corpus.

    Vocabulary layout as CLIP's: the 256 byte symbols, the same with ``</w>``, one token per merge,
    then ``<|startoftext|>`` and ``<|endoftext|>``. With ``vocab_size`` (the paper-size text model's
    49408) the merges are followed by ``<|unused_0|>, <|unused_1|>, ...`` up to ``vocab_size - 2``, so the
    two special tokens get CLIP's ids (49406, 49407) and ``len(tokenizer) == vocab_size``; no merge produces
    an unused entry, so text never maps to one (their embedding rows are simply never read).
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
    tokens = list(dict.fromkeys(alphabet + [symbol + "</w>" for symbol in alphabet] + [a + b for a, b in merges]))
    if vocab_size is not None:
        unused = vocab_size - 2 - len(tokens)
        if unused < 0:
            raise ValueError(f"a CLIP tokenizer of {vocab_size} tokens cannot hold the {len(tokens) + 2} it needs")
        tokens += [f"<|unused_{i}|>" for i in range(unused)]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
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


def _processor(name: str, config) -> tuple[str | None, dict | None]:
    """The processor file the real checkpoint ships (name, JSON), from the model's config; None for CLIP."""
    if name == "vjepa2":
        crop = {"height": config.crop_size, "width": config.crop_size}
        return "video_preprocessor_config.json", {
            "video_processor_type": "VJEPA2VideoProcessor", "do_normalize": True, "do_rescale": True,
            "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD, "crop_size": crop}
    if name == "ast":
        return "preprocessor_config.json", {
            "feature_extractor_type": "ASTFeatureExtractor", "do_normalize": True, "mean": AUDIOSET_MEAN,
            "std": AUDIOSET_STD, "max_length": config.max_length, "num_mel_bins": config.num_mel_bins}
    if name == "dinov3":
        return "preprocessor_config.json", _image_processor_json(config.image_size, "DINOv3ViTImageProcessorFast")
    if name == "dino_vitb8":
        return "preprocessor_config.json", _image_processor_json(224, "ViTImageProcessor")
    if name == "dinov2_reg":
        return "preprocessor_config.json", _image_processor_json(224, "BitImageProcessor")
    return None, None


def write_backbones(out_dir, size: str = "tiny", seed: int = 0, frame_size: int = 64, video_frames: int = 32,
                    image_size: int = 224, mel_bins: int = 64, audio_frames: int = 256, progress: bool = True) -> dict:
    """Write the six random-init backbones of ``size`` (``tiny`` or ``paper``) below ``out_dir`` (replacing it).

    Each folder is what ``save_pretrained`` writes plus the processor JSON the real checkpoint ships and,
    for CLIP, the tokenizer (padded to 49408 tokens at ``paper`` size, see ``build_clip_tokenizer``); they
    load through ``weldfilm.models.backbones.load_pretrained`` like the real checkpoints. Architectures are
    ``weldfilm.models.sizes.CONFIGS[size]``; the preprocessing sizes only shape the ``tiny`` ones (and V-JEPA2's
    ``crop_size`` at both sizes). Models are built one at a time (a paper-size DINOv3 is 3.4 GB in fp32) in a
    temporary sibling folder that is renamed into place at the end. Returns a summary (also summary.json).
    """
    from weldfilm.training.progress import progress as progress_bar

    if size not in SIZES:
        raise ValueError(f"backbone size {size!r} is not one of {', '.join(SIZES)}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    shapes = {"frame_size": frame_size, "video_frames": video_frames, "image_size": image_size, "mel_bins": mel_bins,
              "audio_frames": audio_frames}
    tokenizer = build_clip_tokenizer(vocab_size=CLIP_VOCAB_SIZE if size == "paper" else None)
    clip_ids = {"vocab_size": tokenizer.get_vocab_size(), "bos_token_id": tokenizer.token_to_id(BOS_TOKEN),
                "eos_token_id": tokenizer.token_to_id(EOS_TOKEN)}
    summary = {"seed": seed, "size": size, "sizes": shapes, "backbones": {}}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        bar = progress_bar(BACKBONE_NAMES, f"{size} backbones", unit="model") if progress else None
        for name in bar if bar is not None else BACKBONE_NAMES:
            if bar is not None:
                bar.set_postfix_str(name, refresh=False)
            started = time.perf_counter()
            model = build_random_backbone(name, size, seed, clip_ids=clip_ids, **shapes)
            target = tmp / name
            model.save_pretrained(target)
            processor_file, processor_json = _processor(name, model.config)
            if processor_file:
                _write_json(target / processor_file, processor_json)
            if name == "clip":
                _save_clip_tokenizer(tokenizer, target)
            parameters = sum(p.numel() for p in model.parameters())
            summary["backbones"][name] = {"class": type(model).__name__, "hidden_size": model.config.hidden_size,
                                          "parameters": parameters}
            del model
            if bar is not None:
                written = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
                bar.write(f"{name}: {CLASS_NAMES[name]}, {parameters / 1e6:.1f} M parameters, "
                          f"{written / 1e9:.2f} GB in {time.perf_counter() - started:.1f} s")
        _write_json(tmp / "summary.json", summary)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return summary


def write_tiny_backbones(out_dir, seed: int = 0, frame_size: int = 64, video_frames: int = 32, image_size: int = 224,
                         mel_bins: int = 64, audio_frames: int = 256) -> dict:
    """The tiny backbones (``write_backbones(size="tiny")``, without the progress lines)."""
    return write_backbones(out_dir, "tiny", seed, frame_size=frame_size, video_frames=video_frames,
                           image_size=image_size, mel_bins=mel_bins, audio_frames=audio_frames, progress=False)


def add_cli_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="folder to write (replaced): DIR/{%s}" % ",".join(BACKBONE_NAMES))
    parser.add_argument("--size", choices=SIZES, default="tiny",
                        help="tiny stand-ins (default) or 'paper': the published architectures (~1.5 B parameters, "
                             "~6 GB in fp32), random-init")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    parser.add_argument("--frame-size", type=int, default=64, help="video frame size = V-JEPA2 crop_size")
    parser.add_argument("--video-frames", type=int, default=32, help="frames per clip of V-JEPA2 (tiny only)")
    parser.add_argument("--image-size", type=int, default=224, help="DINOv3 image size (tiny only)")
    parser.add_argument("--mel-bins", type=int, default=64, help="AST num_mel_bins (tiny only; paper: 128)")
    parser.add_argument("--audio-frames", type=int, default=256, help="AST max_length (tiny only; paper: 1024)")


def cli(args) -> int:
    summary = write_backbones(args.out, getattr(args, "size", "tiny"), seed=args.seed, frame_size=args.frame_size,
                              video_frames=args.video_frames, image_size=args.image_size, mel_bins=args.mel_bins,
                              audio_frames=args.audio_frames, progress=getattr(args, "size", "tiny") == "paper")
    for name, info in summary["backbones"].items():
        print(f"{name}: {info['class']} ({info['parameters']} parameters)")
    return 0
