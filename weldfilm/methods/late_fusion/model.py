"""Late Fusion baseline (paper section 10.4.1): the two autoencoders and the score fusion, no fitting code.

* ``AudioAutoEncoder``: 1-D CNN over time with the STFT frequency bins as channels (LeakyReLU 0.2,
  48-channel bottleneck); frame score = MSE over frequency -> ``(B, time)``; sample score = mean.
* ``VideoAutoEncoder``: stage 1 = per-frame global average pool -> frozen bias-free
  ``Linear(3 -> 2304)`` (seeded; the authors' fallback when no SlowFast model is given), stage 2 =
  fully connected AE (ReLU, dropout 0.5); frame score = MSE over features -> ``(B, frames)``;
  sample score = max of a moving average over ``window`` frames (the mean for shorter clips).
* ``zscore_stats`` / ``fuse_scores`` / ``search_fusion_weight``: training-set z-scores, fixed
  weighted sum (0.37 audio / 0.63 video) and the optional weight search.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from weldfilm.errors import DataError
from weldfilm.metrics.image import image_auroc


def moving_average_max(frame_scores: torch.Tensor, window: int) -> torch.Tensor:
    """``(B, T)`` -> ``(B,)``: max over the moving average of ``window`` frames; the mean when ``T < window``."""
    if frame_scores.shape[1] < window:
        return frame_scores.mean(dim=1)
    averages = F.avg_pool1d(frame_scores.unsqueeze(1), kernel_size=window, stride=1).squeeze(1)
    return averages.amax(dim=1)


class AudioAutoEncoder(nn.Module):
    """1-D convolutional AE over ``(B, 1, n_bins, T)`` STFT magnitudes (frequency bins = channels)."""

    def __init__(self, n_bins: int, hidden_channels: Sequence[int] = (128,), bottleneck: int = 48,
                 kernel_size: int = 3):
        super().__init__()
        widths = [n_bins, *hidden_channels, bottleneck]
        self.encoder = self._stack(widths, kernel_size, last_activation=True)
        self.decoder = self._stack(widths[::-1], kernel_size, last_activation=False)
        self.n_bins = n_bins

    @staticmethod
    def _stack(widths: Sequence[int], kernel_size: int, last_activation: bool) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2))
            if last_activation or i < len(widths) - 2:
                layers.append(nn.LeakyReLU(0.2))
        return nn.Sequential(*layers)

    def _spectrogram(self, batch: dict) -> torch.Tensor:
        audio = batch["audio"]
        if audio.dim() != 4 or audio.shape[1] != 1 or audio.shape[2] != self.n_bins:
            raise DataError(f"Late Fusion audio AE expects audio (B, 1, {self.n_bins}, T) STFT magnitudes, got "
                            f"{tuple(audio.shape)} (build the dataset with audio_type='stft' and the same n_fft)")
        return audio[:, 0]

    def frame_scores(self, batch: dict) -> torch.Tensor:
        """Reconstruction MSE over frequency bins -> ``(B, T)``."""
        spec = self._spectrogram(batch)
        recon = self.decoder(self.encoder(spec))
        return (recon - spec).square().mean(dim=1)

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"loss": self.frame_scores(batch).mean()}

    def anomaly_scores(self, batch: dict) -> torch.Tensor:
        """Expected frame error (mean over time) -> ``(B,)``."""
        return self.frame_scores(batch).mean(dim=1)


class VideoAutoEncoder(nn.Module):
    """Frozen pooled-RGB projection (stage 1) + fully connected AE (stage 2) over ``(B, T, 3, H, W)``."""

    def __init__(self, feature_dim: int = 2304, hidden_dims: Sequence[int] = (512, 128), dropout: float = 0.5,
                 projection_seed: int = 0, window: int = 60):
        super().__init__()
        generator = torch.Generator().manual_seed(projection_seed)
        bound = 1.0 / np.sqrt(3.0)  # nn.Linear's default init range for 3 inputs
        projection = (torch.rand(feature_dim, 3, generator=generator) * 2 - 1) * bound
        self.register_buffer("projection", projection)  # frozen: a buffer is never optimised
        widths = [feature_dim, *hidden_dims]
        encoder, decoder = [], []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            encoder += [nn.Linear(c_in, c_out), nn.ReLU()] + ([nn.Dropout(dropout)] if i == 0 else [])
        reverse = widths[::-1]
        for i, (c_in, c_out) in enumerate(zip(reverse[:-1], reverse[1:])):
            last = i == len(reverse) - 2
            decoder += [nn.Linear(c_in, c_out)] + ([] if last else [nn.ReLU()])
            if i == 0 and not last:
                decoder.append(nn.Dropout(dropout))
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)
        self.window = int(window)

    def frame_features(self, batch: dict) -> torch.Tensor:
        """Stage 1: per-frame global average pool -> frozen projection -> ``(B, T, feature_dim)``."""
        video = batch["video"]
        if video.dim() != 5 or video.shape[2] != 3:
            raise DataError(f"Late Fusion video AE expects video (B, T, 3, H, W), got {tuple(video.shape)}")
        return video.mean(dim=(3, 4)) @ self.projection.T

    def frame_scores(self, batch: dict) -> torch.Tensor:
        """Reconstruction MSE over features -> ``(B, T)``."""
        features = self.frame_features(batch)
        recon = self.decoder(self.encoder(features))
        return (recon - features).square().mean(dim=2)

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"loss": self.frame_scores(batch).mean()}

    def anomaly_scores(self, batch: dict) -> torch.Tensor:
        """Max of the moving average of frame errors -> ``(B,)``."""
        return moving_average_max(self.frame_scores(batch), self.window)


def zscore_stats(scores: np.ndarray, what: str) -> dict[str, float]:
    """Mean and (population) std of training-set scores; error if the std is zero."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0 or not np.all(np.isfinite(scores)):
        raise DataError(f"Late Fusion: {what} training scores are empty or not finite; cannot standardise")
    std = float(scores.std())
    if std == 0.0:
        raise DataError(f"Late Fusion: all {what} training scores are equal ({scores[0]}); cannot standardise "
                        "(check that the training runs differ and the autoencoder was trained)")
    return {"mean": float(scores.mean()), "std": std}


def fuse_scores(audio: np.ndarray, video: np.ndarray, stats: dict, w_audio: float, w_video: float) -> np.ndarray:
    """``w_audio * z(audio) + w_video * z(video)`` with the training-set statistics ``stats``."""
    z_audio = (np.asarray(audio, dtype=np.float64) - stats["audio"]["mean"]) / stats["audio"]["std"]
    z_video = (np.asarray(video, dtype=np.float64) - stats["video"]["mean"]) / stats["video"]["std"]
    return w_audio * z_audio + w_video * z_video


def search_fusion_weight(audio: np.ndarray, video: np.ndarray, labels: np.ndarray, stats: dict,
                         steps: int = 101) -> dict[str, float]:
    """Grid search of ``w_audio`` in [0, 1] (``w_video = 1 - w_audio``) maximising I-AUROC on the given scores."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise DataError("Late Fusion weight search needs good and defective runs in the selection split")
    best = {"w_audio": 0.0, "w_video": 1.0, "i_auroc": -1.0}
    for w_audio in np.linspace(0.0, 1.0, steps):
        auroc = image_auroc(labels, fuse_scores(audio, video, stats, w_audio, 1.0 - w_audio))
        if auroc > best["i_auroc"]:
            best = {"w_audio": float(w_audio), "w_video": float(1.0 - w_audio), "i_auroc": float(auroc)}
    return best
