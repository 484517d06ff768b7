"""Frozen HF backbones of Causal-FiLM (V-JEPA2, AST, DINOv3, CLIP text) and their input adaptation.

Everything is loaded from local folders with ``local_files_only=True`` (``HF_HUB_OFFLINE=1`` is set
before transformers is imported here): nothing touches the network. A missing folder, a folder
without weights, a checkpoint of the wrong class or a tokenizer that does not fit its model stops
with a ``BackboneError`` that names the folder and what to do.

Input adaptation (each recorded by ``FrozenBackbones.input_adaptation()``):

* video ``(B,T,3,H,W)`` in [0,1] -> normalised with the checkpoint's ``video_preprocessor_config.json``
  mean/std (ImageNet mean/std when the file is absent) -> ``VJEPA2Model(skip_predictor=True)``. V-JEPA2 is
  loaded with ``crop_size = preprocess.frame_size`` (its RoPE grid is built from crop_size; a mismatch runs
  silently with wrong positions), and a frame of another size is rejected.
* audio mel ``(B,1,F,T)`` -> F must equal ``preprocess.audio_mel_bins`` (a transposed input is rejected) ->
  ``(B,T,F)`` -> bilinear resize to the checkpoint's ``max_length x num_mel_bins`` (as the authors did,
  e.g. 256x64 -> 1024x128) -> AST normalisation ``(x - mean) / (2 std)`` from ``preprocessor_config.json``
  when present (none otherwise) -> ``ASTModel``.
* images ``(B,N,3,H,W)`` in [0,1] -> ImageNet/processor normalisation -> ``DINOv3ViTModel`` with
  ``output_hidden_states=True``; only the two hidden states ``causal_film.result_layers`` are kept
  (index 0 = embedding output, as in HF ``hidden_states``).
* text -> CLIP tokenizer -> ``CLIPTextModelWithProjection.text_embeds`` (the projected embedding, as
  ``clip.encode_text``); a full CLIP checkpoint folder is accepted and only its text tower is loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from weldfilm.errors import BackboneError, ConfigError  # noqa: E402
from weldfilm.io import stable_hash  # noqa: E402
from weldfilm.training.precision import as_fp32, backbone_autocast  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
HINT = "run `weldfilm tiny-backbones --out DIR` for tiny ones, or set config backbones.* to a downloaded checkpoint"


def _weight_files(directory: Path) -> list[Path]:
    return [directory / name for name in WEIGHT_FILES if (directory / name).is_file()] + sorted(
        p for p in directory.glob("model-*.safetensors"))


def _check_directory(directory: Path, what: str) -> None:
    if not directory.is_dir():
        raise BackboneError(f"{what} backbone folder {directory} does not exist ({HINT})")
    if not (directory / "config.json").is_file():
        raise BackboneError(f"{what} backbone folder {directory} has no config.json ({HINT})")
    if not _weight_files(directory):
        raise BackboneError(f"{what} backbone folder {directory} has no weights (expected one of "
                            f"{', '.join(WEIGHT_FILES)}); copy the checkpoint's weights there ({HINT})")


def load_pretrained(path, expected_class, **config_overrides):
    """Load a frozen, eval-mode model of ``expected_class`` from a local folder (never the network).

    ``AutoModel`` is used when it resolves to ``expected_class``; a checkpoint of the same family
    (same config class with another head, or a composite config such as a full CLIP holding the
    text config) is loaded with ``expected_class.from_pretrained``. Anything else is a BackboneError, and
    so is any weight left missing or re-initialised for a shape mismatch (it would be silently random).
    ``config_overrides`` go to ``from_pretrained`` (config attributes such as ``crop_size``, or model
    arguments such as ``add_pooling_layer=False``).
    """
    from transformers import AutoConfig, AutoModel

    from weldfilm.training.progress import library_bars_to_logs

    library_bars_to_logs()  # no carriage-return bar of the weight loading in a job's log
    directory = Path(path)
    what = expected_class.__name__
    _check_directory(directory, what)
    try:
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise BackboneError(f"{what} backbone folder {directory}: config.json is unreadable ({exc})") from exc
    wanted_config = expected_class.config_class
    sub_configs = getattr(config, "sub_configs", {}) or {}
    same_family = isinstance(config, wanted_config) or any(c is wanted_config for c in sub_configs.values())
    try:
        auto_class = AutoModel._model_mapping[type(config)]
    except KeyError:
        auto_class = None
    if not same_family:
        found = auto_class.__name__ if auto_class else type(config).__name__
        raise BackboneError(f"backbone folder {directory} holds a '{config.model_type}' checkpoint ({found}), "
                            f"expected {what}; point the config at the right folder ({HINT})")
    loader = AutoModel if auto_class is expected_class else expected_class
    try:
        model, info = loader.from_pretrained(directory, local_files_only=True, output_loading_info=True,
                                             **config_overrides)
    except (OSError, ValueError, RuntimeError) as exc:
        raise BackboneError(f"{what} backbone folder {directory}: loading failed ({exc}) ({HINT})") from exc
    not_loaded = sorted(info.get("missing_keys", [])) + [str(k[0]) if isinstance(k, tuple) else str(k)
                                                         for k in info.get("mismatched_keys", [])]
    if not_loaded:
        raise BackboneError(f"{what} backbone folder {directory}: weights missing or of another shape for "
                            f"{not_loaded[:5]}{' ...' if len(not_loaded) > 5 else ''}; these would be random "
                            f"-- the checkpoint does not match its config")
    if not isinstance(model, expected_class):
        raise BackboneError(f"backbone folder {directory} loaded as {type(model).__name__}, expected {what}")
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def load_clip_tokenizer(path, vocab_size: int):
    """The CLIP tokenizer of a folder; its vocabulary must have exactly the text model's ``vocab_size``."""
    from transformers import AutoTokenizer

    directory = Path(path)
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise BackboneError(f"CLIP folder {directory} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); "
                            f"copy the checkpoint's tokenizer files there ({HINT})")
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    if len(tokenizer) != vocab_size:
        raise BackboneError(f"CLIP folder {directory}: tokenizer has {len(tokenizer)} tokens but the text model's "
                            f"vocab_size is {vocab_size}; the tokenizer files do not belong to this model")
    return tokenizer


def read_processor_json(directory: Path, names=("preprocessor_config.json", "video_preprocessor_config.json")) -> dict:
    """The first processor JSON found in a checkpoint folder (empty dict if none)."""
    for name in names:
        if (Path(directory) / name).is_file():
            return json.loads((Path(directory) / name).read_text()) | {"_file": name}
    return {}


def image_normalisation(directory: Path) -> dict:
    """mean/std of a vision checkpoint's processor JSON, ImageNet's when absent (the source is recorded)."""
    processor = read_processor_json(directory)
    if "image_mean" in processor and "image_std" in processor:
        return {"mean": list(processor["image_mean"]), "std": list(processor["image_std"]), "source": processor["_file"]}
    return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "source": "ImageNet default (no processor JSON)"}


def normalise_images(images: torch.Tensor, norm: dict) -> torch.Tensor:
    """(..., 3, H, W) in [0, 1] -> (x - mean) / std over the channel axis."""
    mean = torch.tensor(norm["mean"], dtype=images.dtype, device=images.device).view(3, 1, 1)
    std = torch.tensor(norm["std"], dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images - mean) / std


def resize_mel_for_ast(mel: torch.Tensor, mel_bins: int, max_length: int, num_mel_bins: int) -> torch.Tensor:
    """(B,1,F,T) mel with F == mel_bins -> (B, max_length, num_mel_bins) by bilinear resize (time, mel)."""
    if mel.dim() != 4 or mel.shape[1] != 1:
        raise BackboneError(f"audio must be (B, 1, mel_bins, time), got shape {tuple(mel.shape)}")
    if mel.shape[2] != mel_bins:
        raise BackboneError(f"audio has {mel.shape[2]} rows on the mel axis (dim 2 of (B,1,F,T)) but "
                            f"preprocess.audio_mel_bins is {mel_bins}: the input is transposed or made with "
                            f"other settings")
    time_major = mel.transpose(2, 3)  # (B, 1, T, F)
    resized = F.interpolate(time_major, size=(max_length, num_mel_bins), mode="bilinear", align_corners=False)
    return resized[:, 0]


class FrozenBackbones:
    """The four frozen backbones of Causal-FiLM on one device; every call runs under ``torch.no_grad``."""

    def __init__(self, video_model, audio_model, image_model, clip_model, tokenizer, directories: dict,
                 preprocess: dict, result_layers, device, train_cfg: dict | None = None):
        self.video_model, self.audio_model, self.image_model = video_model, audio_model, image_model
        self.train_cfg = dict(train_cfg or {})  # backbone_precision (weldfilm.training.precision)
        self.clip_model, self.tokenizer = clip_model, tokenizer
        self.directories = {k: (str(v) if v is not None else None) for k, v in directories.items()}
        self.preprocess = dict(preprocess)
        self.result_layers = [int(i) for i in result_layers]
        self.device = torch.device(device)
        self.video_norm = image_normalisation(Path(directories["video"]))
        self.image_norm = image_normalisation(Path(directories["image"]))
        self.audio_norm = self._audio_normalisation(Path(directories["audio"]))
        self._token_shapes: dict | None = None
        num_states = image_model.config.num_hidden_layers + 1
        if len(self.result_layers) != 2 or any(not 0 <= i < num_states for i in self.result_layers):
            raise ConfigError(f"config key 'causal_film.result_layers' = {self.result_layers}: the image backbone in "
                              f"{directories['image']} has {num_states} hidden states (indices 0..{num_states - 1}); "
                              f"give two of them")
        for model in (video_model, audio_model, image_model, clip_model):
            if model is not None:
                model.to(self.device)

    @classmethod
    def from_config(cls, cfg: dict, device) -> "FrozenBackbones":
        """Load the backbones named by ``cfg['backbones']`` (a validated run config)."""
        from transformers import ASTModel, CLIPTextModelWithProjection, DINOv3ViTModel, VJEPA2Model

        paths, pre = cfg["backbones"], cfg["preprocess"]
        video = load_pretrained(paths["video"], VJEPA2Model, crop_size=pre["frame_size"])
        audio = load_pretrained(paths["audio"], ASTModel)
        image = load_pretrained(paths["image"], DINOv3ViTModel, output_hidden_states=True)
        clip, tokenizer = None, None
        if paths.get("clip"):
            clip = load_pretrained(paths["clip"], CLIPTextModelWithProjection)
            tokenizer = load_clip_tokenizer(paths["clip"], clip.config.vocab_size)
        directories = {name: paths.get(name) for name in ("video", "audio", "image", "clip")}
        return cls(video, audio, image, clip, tokenizer, directories, pre, cfg["causal_film"]["result_layers"], device,
                   train_cfg=cfg.get("train"))

    @staticmethod
    def _audio_normalisation(directory: Path) -> dict:
        processor = read_processor_json(directory, ("preprocessor_config.json",))
        if processor.get("do_normalize", False) and "mean" in processor and "std" in processor:
            return {"mean": float(processor["mean"]), "std": float(processor["std"]), "source": processor["_file"]}
        return {"mean": 0.0, "std": 0.5, "source": "none (no AST processor JSON): (x - 0) / (2 * 0.5) = x"}

    # ------------------------------------------------------------------ per-modality tokens
    @torch.no_grad()
    def video_tokens(self, video: torch.Tensor) -> torch.Tensor:
        """(B,T,3,H,W) in [0,1] -> (B, Lv, Dv) V-JEPA2 encoder tokens."""
        config = self.video_model.config
        if video.dim() != 5 or video.shape[2] != 3:
            raise BackboneError(f"video must be (B, T, 3, H, W), got shape {tuple(video.shape)}")
        if video.shape[-1] != config.crop_size or video.shape[-2] != config.crop_size:
            raise BackboneError(f"video frames are {tuple(video.shape[-2:])} but V-JEPA2 ({self.directories['video']}) "
                                f"was loaded with crop_size={config.crop_size}; set preprocess.frame_size to match")
        if video.shape[1] % config.tubelet_size:
            raise BackboneError(f"video has {video.shape[1]} frames, not a multiple of V-JEPA2's tubelet size "
                                f"{config.tubelet_size}; change preprocess.video_frames")
        pixels = normalise_images(video.to(self.device, torch.float32), self.video_norm)
        with backbone_autocast(self.device, self.train_cfg):
            tokens = self.video_model(pixel_values_videos=pixels, skip_predictor=True).last_hidden_state
        return as_fp32(tokens)

    @torch.no_grad()
    def audio_tokens(self, mel: torch.Tensor) -> torch.Tensor:
        """(B,1,F,T) mel (F = preprocess.audio_mel_bins) -> (B, La, Da) AST tokens."""
        config = self.audio_model.config
        values = resize_mel_for_ast(mel.to(self.device, torch.float32), self.preprocess["audio_mel_bins"],
                                    config.max_length, config.num_mel_bins)
        values = (values - self.audio_norm["mean"]) / (2 * self.audio_norm["std"])
        with backbone_autocast(self.device, self.train_cfg):
            tokens = self.audio_model(input_values=values).last_hidden_state
        return as_fp32(tokens)

    @torch.no_grad()
    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B,N,3,H,W) in [0,1] -> (B, N, 2, L, Di): the hidden states ``result_layers`` of every view."""
        if images.dim() != 5 or images.shape[2] != 3:
            raise BackboneError(f"post-weld images must be (B, N, 3, H, W), got shape {tuple(images.shape)}")
        batch, views = images.shape[:2]
        pixels = normalise_images(images.to(self.device, torch.float32).flatten(0, 1), self.image_norm)
        with backbone_autocast(self.device, self.train_cfg):
            hidden = self.image_model(pixel_values=pixels, output_hidden_states=True).hidden_states
        chosen = torch.stack([as_fp32(hidden[i]) for i in self.result_layers], dim=1)  # (B*N, 2, L, Di)
        tokens = chosen.unflatten(0, (batch, views))
        return tokens

    @torch.no_grad()
    def text_embedding(self, prompt: str) -> torch.Tensor:
        """(Dc,) projected CLIP text embedding of ``prompt``; BackboneError when no CLIP is configured."""
        if self.clip_model is None:
            raise BackboneError("no CLIP text model configured (backbones.clip is null); the text term is off")
        encoded = self.tokenizer([prompt], return_tensors="pt", padding=True).to(self.device)
        with backbone_autocast(self.device, self.train_cfg):
            return as_fp32(self.clip_model(**encoded).text_embeds[0])

    def extract(self, batch: dict) -> dict:
        """A collated data batch -> the feature batch the cache stores and the Causal-FiLM head consumes."""
        missing = [k for k in ("video", "audio", "post_weld_images", "num_images", "sensor") if k not in batch]
        if missing:
            raise BackboneError(f"batch lacks {missing}; build the dataset with video, audio, images and sensor")
        return {
            "video_tokens": self.video_tokens(batch["video"]),
            "audio_tokens": self.audio_tokens(batch["audio"]),
            "image_tokens": self.image_tokens(batch["post_weld_images"]),
            "num_images": torch.as_tensor(batch["num_images"]),
            "sensor": batch["sensor"],
            "label": torch.as_tensor(batch["label"]),
            "class_label": torch.as_tensor(batch["class_label"]),
            "sample_id": list(batch["sample_id"]),
        }

    # ------------------------------------------------------------------ descriptions
    @property
    def dims(self) -> dict:
        """Token widths read from the backbone configs (+ DINOv3's CLS + register token count)."""
        image_config = self.image_model.config
        return {"video": self.video_model.config.hidden_size, "audio": self.audio_model.config.hidden_size,
                "image": image_config.hidden_size,
                "clip": self.clip_model.config.projection_dim if self.clip_model is not None else None,
                "image_prefix_tokens": 1 + int(getattr(image_config, "num_register_tokens", 0))}

    def token_shapes(self) -> dict:
        """Per-sample token shapes at the configured input sizes (the spec's open TODO), measured once."""
        if self._token_shapes is None:
            pre = self.preprocess
            self._token_shapes = {
                "video_tokens": self.video_tokens(torch.zeros(1, pre["video_frames"], 3, pre["frame_size"],
                                                              pre["frame_size"])).shape[1:],
                "audio_tokens": self.audio_tokens(torch.zeros(1, 1, pre["audio_mel_bins"], pre["audio_frames"])).shape[1:],
                "image_tokens": self.image_tokens(torch.zeros(1, pre["num_angles"], 3, pre["image_size"],
                                                              pre["image_size"])).shape[1:]}
        shapes = {name: list(shape) for name, shape in self._token_shapes.items()}
        shapes["image_tokens_layout"] = "(num_angles, 2 result layers, tokens, dim)"
        shapes["result_layers"] = self.result_layers
        return shapes

    def input_adaptation(self) -> dict:
        """What is done to each input before its backbone (for the run metadata)."""
        audio_config = self.audio_model.config
        return {"video": {"normalisation": self.video_norm, "crop_size": self.video_model.config.crop_size},
                "audio": {"normalisation": self.audio_norm, "resize": "bilinear (time, mel) -> "
                          f"({audio_config.max_length}, {audio_config.num_mel_bins})"},
                "image": {"normalisation": self.image_norm, "result_layers": self.result_layers},
                "clip": "CLIPTextModelWithProjection.text_embeds" if self.clip_model is not None else None}

    def fingerprint(self) -> dict:
        """Class, folder, config hash and weight bytes of every backbone (part of the feature-cache key)."""
        out = {}
        for name, model in (("video", self.video_model), ("audio", self.audio_model), ("image", self.image_model),
                            ("clip", self.clip_model)):
            if model is None:
                out[name] = None
                continue
            directory = Path(self.directories[name])
            config = {k: v for k, v in model.config.to_dict().items() if k not in ("transformers_version", "_name_or_path")}
            out[name] = {"class": type(model).__name__, "dir": str(directory), "config_hash": stable_hash(config),
                         "weight_bytes": sum(p.stat().st_size for p in _weight_files(directory))}
        out["input_adaptation_hash"] = stable_hash(self.input_adaptation())
        return out
