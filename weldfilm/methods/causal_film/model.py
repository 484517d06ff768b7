"""Causal-FiLM: the model on cached frozen-backbone features, and the trainable head (model + loss).

Input: the **feature batch** of ``FrozenBackbones.extract`` -- ``video_tokens (B,Lv,Dv)``,
``audio_tokens (B,La,Da)``, ``image_tokens (B,N,2,L,Di)``, ``num_images (B,)``, ``sensor (B,T_s,C_s)``
(plus labels and ids, unused here). ``dims`` = ``FrozenBackbones.dims`` (+ optional ``sensor`` = C_s, default 6).

Forward: project video/audio to d (train-time Gaussian noise ``feature_noise`` and Bernoulli masking
``feature_mask_ratio`` with 1/(1-r) rescaling on the raw features first) -> FiLM with (gamma, beta)
from the sensor modulator -> process encoder -> anti-generalisation decoder -> Z_pred; result encoder on
every view -> pooled over the views -> Z_res.

Ablation switches of ``cfg_causal_film``: ``use_film: false`` keeps the modulator (it still runs,
so parameter count and sensor input are unchanged) but applies gamma = 1, beta = 0; ``use_sensor: false``
removes the modulator (no sensor needed) with gamma = 1, beta = 0; ``sensor_encoder: gru``;
``process_branch: video_only | audio_only`` (the present modality is tgt and memory; the other is not
projected); ``result_pooling: mean`` (GeM replaced by mean); ``view_pooling: mean``. The decoder's
``decoder_num_layers`` / ``decoder_dropout`` default to the authors' effective 1 / 0.1 (their config's
2 / 0.2 never reached the model, spec section 5); ``view_padding: include`` pools zero-padded views as
the authors' code did.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from weldfilm.errors import ConfigError
from weldfilm.methods.causal_film.decoder import AntiGenDecoder
from weldfilm.methods.causal_film.encoders import FeatureProjector, ProcessEncoder, RobustResultEncoder, pool_views, view_mask
from weldfilm.methods.causal_film.film import SensorModulator, film, identity_film_parameters
from weldfilm.methods.causal_film.losses import CausalFiLMLoss, compute_anomaly_score
from weldfilm.methods.causal_film.mamba import scan_implementation

MODEL_KEYS = ("d_model", "sensor_hidden_dim", "sensor_encoder", "use_film", "use_sensor", "process_branch",
              "result_pooling", "view_pooling", "top_k_ratio", "projector_hidden", "feature_noise",
              "feature_mask_ratio", "result_drop_special_tokens", "view_padding", "decoder_num_layers",
              "decoder_dropout")


class CausalFiLMModel(nn.Module):
    """features -> {"z_res", "z_pred", "gamma", "beta"}; ``anomaly_scores`` -> (B,)."""

    def __init__(self, cfg_causal_film: dict, dims: dict):
        super().__init__()
        missing = [key for key in MODEL_KEYS if key not in cfg_causal_film]
        if missing:
            raise ConfigError(f"config section 'causal_film' lacks {missing}; pass a validated config "
                              f"(weldfilm.config fills the schema defaults)")
        cfg = {key: cfg_causal_film[key] for key in MODEL_KEYS}
        self.cfg = cfg
        d, hidden = cfg["d_model"], cfg["projector_hidden"]
        self.d_model = d
        self.branch = cfg["process_branch"]
        self.uses_video = self.branch in ("both", "video_only")
        self.uses_audio = self.branch in ("both", "audio_only")
        self.video_projector = FeatureProjector(dims["video"], hidden, d) if self.uses_video else None
        self.audio_projector = FeatureProjector(dims["audio"], hidden, d) if self.uses_audio else None
        self.modulator = (SensorModulator(d, dims.get("sensor", 6), cfg["sensor_hidden_dim"], cfg["sensor_encoder"])
                          if cfg["use_sensor"] else None)
        self.process_encoder = ProcessEncoder(d, branch=self.branch)
        self.result_encoder = RobustResultEncoder(
            dims["image"], d, pooling=cfg["result_pooling"], drop_special_tokens=cfg["result_drop_special_tokens"],
            num_special_tokens=dims.get("image_prefix_tokens", 1), hidden_dim=hidden)
        self.decoder = AntiGenDecoder(d, dropout=cfg["decoder_dropout"], num_layers=cfg["decoder_num_layers"])

    def _regularise(self, raw: torch.Tensor) -> torch.Tensor:
        """Train-time Gaussian noise then Bernoulli masking (rescaled by 1/(1-r)) of raw backbone features."""
        if not self.training:
            return raw
        if self.cfg["feature_noise"] > 0:
            raw = raw + torch.randn_like(raw) * self.cfg["feature_noise"]
        if self.cfg["feature_mask_ratio"] > 0:
            raw = F.dropout(raw, p=self.cfg["feature_mask_ratio"], training=True)
        return raw

    def _tokens(self, features: dict, key: str) -> torch.Tensor:
        reference = next(self.parameters())
        return torch.as_tensor(features[key]).to(reference.device, reference.dtype)

    def film_parameters(self, features: dict, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        like = next(self.parameters())
        if self.modulator is None:
            return identity_film_parameters(batch_size, self.d_model, like)
        gamma, beta = self.modulator(self._tokens(features, "sensor"))
        if not self.cfg["use_film"]:
            return identity_film_parameters(batch_size, self.d_model, like)
        return gamma, beta

    def process_feature(self, features: dict, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """Z_proc (B, d) from the FiLM'd, projected process tokens."""
        video = audio = None
        if self.uses_video:
            video = film(self.video_projector(self._regularise(self._tokens(features, "video_tokens"))), gamma, beta)
        if self.uses_audio:
            audio = film(self.audio_projector(self._regularise(self._tokens(features, "audio_tokens"))), gamma, beta)
        return self.process_encoder(video, audio)

    def result_feature(self, features: dict) -> torch.Tensor:
        """Z_res (B, d): the result encoder on every view, pooled over the real views."""
        images = self._tokens(features, "image_tokens")  # (B, N, 2, L, Di)
        batch, views = images.shape[:2]
        per_view = self.result_encoder(images.flatten(0, 1)).unflatten(0, (batch, views))
        mask = view_mask(torch.as_tensor(features["num_images"], device=images.device), views,
                         features.get("sample_id"), include_padded=self.cfg["view_padding"] == "include")
        return pool_views(per_view, mask, self.cfg["view_pooling"])

    def forward(self, features: dict) -> dict[str, torch.Tensor]:
        batch_size = torch.as_tensor(features["image_tokens"]).shape[0]
        gamma, beta = self.film_parameters(features, batch_size)
        z_pred = self.decoder(self.process_feature(features, gamma, beta))
        return {"z_res": self.result_feature(features), "z_pred": z_pred, "gamma": gamma, "beta": beta}

    def anomaly_scores(self, features: dict) -> torch.Tensor:
        out = self(features)
        return compute_anomaly_score(out["z_res"], out["z_pred"], self.cfg["top_k_ratio"])


class CausalFiLMHead(nn.Module):
    """Model + loss: the trainable head the shared Trainer fits (``training_losses``, ``anomaly_scores``)."""

    def __init__(self, cfg_causal_film: dict, cfg_loss: dict, dims: dict, text_embedding: torch.Tensor | None = None):
        super().__init__()
        self.model = CausalFiLMModel(cfg_causal_film, dims)
        self.criterion = CausalFiLMLoss(
            self.model.d_model, lambda_l1=cfg_loss["lambda_l1"], lambda_gram=cfg_loss["lambda_gram"],
            lambda_text=cfg_loss["lambda_text"], top_k_ratio=cfg_causal_film["top_k_ratio"], text_embedding=text_embedding,
            text_target=cfg_loss["text_target"])

    @classmethod
    def from_config(cls, cfg: dict, dims: dict, text_embedding: torch.Tensor | None = None) -> "CausalFiLMHead":
        """From a validated run config (sections causal_film, loss, preprocess) and ``FrozenBackbones.dims``."""
        dims = {"sensor": cfg["preprocess"]["sensor_channels"], **dims}
        return cls(cfg["causal_film"], cfg["loss"], dims, text_embedding)

    def training_losses(self, features: dict) -> dict[str, torch.Tensor]:
        out = self.model(features)
        return self.criterion(out["z_res"], out["z_pred"])

    def anomaly_scores(self, features: dict) -> torch.Tensor:
        return self.model.anomaly_scores(features)

    def describe(self) -> dict:
        """Facts for the run metadata: scan path, whether the text term is on, parameter count."""
        device = next(self.parameters()).device
        uses_mamba = self.model.modulator is not None and self.model.cfg["sensor_encoder"] == "mamba"
        return {"sensor_scan": scan_implementation(device) if uses_mamba else None,
                "text_term_active": self.criterion.text_term_active,
                "text_target": self.criterion.text_target if self.criterion.text_term_active else None,
                "trainable_parameters": sum(p.numel() for p in self.parameters() if p.requires_grad),
                "model_config": dict(self.model.cfg)}
