"""The Late Fusion baseline as a ``Method`` (paper section 10.4.1).

Two autoencoders fitted one after the other by the shared ``Trainer`` in one run directory
(checkpoint prefixes ``audio_`` and ``video_``): the audio AE on STFT magnitudes (Adam + OneCycle
per step), the video AE on pooled frames (Adam, early stopping). After fitting, the selected
checkpoints score the TRAIN split once to get the z-score statistics, which ``fusion.json`` keeps
with the fusion weights (fixed 0.37 / 0.63, or searched on the selection split when
``late_fusion.search_weights`` is on). ``score`` fuses the two standardised scores.
"""

from __future__ import annotations

import torch

from weldfilm.methods.late_fusion.model import (AudioAutoEncoder, VideoAutoEncoder, fuse_scores,
                                                   search_fusion_weight, zscore_stats)
from weldfilm.data.store import late_fusion_arguments
from weldfilm.io import read_json, write_json
from weldfilm.methods.base import MemoryCachedDataset, Method, normal_only_subset, scores_frame
from weldfilm.training import load_selected_weights, score_loader

BRANCHES = ("audio", "video")


class AudioHead(AudioAutoEncoder):
    """The audio AE with its paper schedule: Adam + OneCycle (cosine, ``pct_start``) stepped per batch."""

    def __init__(self, section: dict):
        super().__init__(section["n_fft"] // 2 + 1, section["audio_hidden_channels"], section["audio_bottleneck"],
                         section["audio_kernel_size"])
        self.pct_start = section["audio_pct_start"]

    def configure_optimizer(self, train_cfg: dict, steps_per_epoch: int):
        optimizer = torch.optim.Adam(self.parameters(), lr=train_cfg["lr"], fused=True)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=train_cfg["lr"], epochs=train_cfg["epochs"],
                                                        steps_per_epoch=max(1, steps_per_epoch),
                                                        pct_start=self.pct_start, anneal_strategy="cos")
        return optimizer, scheduler, "step"


class VideoHead(VideoAutoEncoder):
    """The video AE with its paper optimiser: Adam at a constant lr (no schedule)."""

    def __init__(self, section: dict):
        window = max(1, round(section["video_window_s"] * section["video_fps"]))
        super().__init__(section["video_feature_dim"], section["video_hidden_dims"], section["video_dropout"],
                         section["projection_seed"], window)

    def configure_optimizer(self, train_cfg: dict, steps_per_epoch: int):
        return torch.optim.Adam(self.parameters(), lr=train_cfg["lr"], fused=True), None, "epoch"


class LateFusionMethod(Method):
    """Audio AE + video AE, z-scored with TRAIN statistics and fused with fixed (or searched) weights."""

    name = "late_fusion"
    paper_selection_split = "test"  # the authors validated on TEST during training
    modalities = BRANCHES
    needs_selection = True

    def __init__(self, cfg: dict, run_dir, device=None, feature_dir=None):
        super().__init__(cfg, run_dir, device, feature_dir)
        self.section = cfg["late_fusion"]
        self.selection = self.selection_split  # checked by Method.__init__ (fair_selection_split)
        self.fusion_path = self.run_dir / "fusion.json"
        self._datasets: dict = {}

    # ------------------------------------------------------------------------------------- data
    def _dataset(self, split: str, branch: str):
        """The split decoded for one branch (STFT audio or video), kept in memory if ``cache_inputs``."""
        key = (split, branch)
        if key not in self._datasets:
            s = self.section
            dataset = self.dataset(split, augment=False, **self.input_overrides(branch))
            self._datasets[key] = MemoryCachedDataset(dataset) if s["cache_inputs"] else dataset
        return self._datasets[key]

    def input_overrides(self, branch: str) -> dict:
        """Dataset arguments of one branch: STFT audio at Late Fusion's rate and window, or its video frames
        (``weldfilm.data.store.late_fusion_arguments``: the decoded-input store reads the same)."""
        return late_fusion_arguments(self.cfg, branch)

    def _loader(self, split: str, branch: str, train: bool = False):
        dataset = self._dataset(split, branch)
        if train:
            dataset = normal_only_subset(dataset)
        return self.loader(dataset, train, batch_size=self.section["batch_size"] if train else None)

    def _head(self, branch: str):
        """A fresh autoencoder, initialised from the run seed (not from whatever the global RNG holds)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return AudioHead(self.section) if branch == "audio" else VideoHead(self.section)

    def _train_cfg(self, branch: str) -> dict:
        """The shared ``train`` section with this autoencoder's epochs, lr and patience (no EMA, no clipping)."""
        s = self.section
        own = (dict(epochs=s["audio_epochs"], lr=s["audio_lr"], early_stopping_patience=0) if branch == "audio" else
               dict(epochs=s["video_epochs"], lr=s["video_lr"], early_stopping_patience=s["video_patience"]))
        return {**self.cfg["train"], "use_ema": False, "warmup_epochs": 0, "gradient_clip": 0.0, **own}

    # -------------------------------------------------------------------------------------- API
    def uses_augmentation(self) -> bool:
        return False  # the authors built WeldingDataset without augment=True

    def input_resolution(self) -> dict:
        s = self.section
        return {"audio": {"type": "stft", "sr": s["audio_sr"], "n_fft": s["n_fft"], "hop_length": s["hop_length"],
                          "bins": s["n_fft"] // 2 + 1, "frames": s["audio_frames"]},
                "video": {"frames": s["video_frames"], "size": s["frame_size"]}}

    def token_shapes(self) -> dict:
        """Per-run input shapes of the two autoencoders, read from the first TRAIN run: STFT magnitudes
        ``audio (1, n_fft // 2 + 1, audio_frames)`` (8193 x 1024 at the paper's 192 kHz / n_fft 16384) and
        ``video (frames, 3, size, size)``."""
        shapes = {}
        for branch in BRANCHES:
            dataset = self._dataset("train", branch)
            if len(dataset):
                shapes[branch] = list(dataset[0][branch].shape)
        return shapes

    def describe(self) -> dict:
        s = self.section
        return {**super().describe(), "selection_split": self.selection,
                "fusion": {"w_audio": s["w_audio"], "w_video": s["w_video"], "search_weights": s["search_weights"],
                           "standardisation": "z-score with TRAIN statistics"}}

    def fit(self, resume: bool = False) -> dict:
        summary = {"selection_split": self.selection, "submodels": {}}
        for branch in BRANCHES:
            result = self.trainer(f"{branch}_", self._train_cfg(branch)).fit(
                self._head(branch), self._loader("train", branch, train=True), self._loader(self.selection, branch),
                resume)
            summary["submodels"][branch] = result.to_dict()
        summary["fusion"] = self._fit_fusion()
        return summary

    def _branch_scores(self, split: str) -> dict:
        """Sample ids, labels and per-branch sample scores of ``split`` from the selected checkpoints.

        Once per method object (``Method.split_result``): the fusion fit, the VAL evaluation and TEST's VAL
        threshold share one VAL pass.
        """
        checkpoints = [self.run_dir / "checkpoints" / f"{branch}_best.pt" for branch in BRANCHES]
        return self.split_result(split, checkpoints, lambda: self._score_branches(split))

    def _score_branches(self, split: str) -> dict:
        out = {}
        for branch in BRANCHES:
            head = self._head(branch)
            load_selected_weights(head, self.run_dir / "checkpoints" / f"{branch}_best.pt")
            scored = score_loader(head.to(self.device), self._loader(split, branch), self.device, self.cfg["train"])
            if "sample_id" in out and out["sample_id"] != scored["sample_id"]:
                raise RuntimeError(f"Late Fusion: the audio and video loaders of {split} disagree on the sample order")
            out.update({branch: scored["score"], "sample_id": scored["sample_id"], "label": scored["label"]})
        return out

    def _fit_fusion(self) -> dict:
        """Training-set z-score statistics and the fusion weights -> ``fusion.json``."""
        train = self._branch_scores("train")
        stats = {branch: zscore_stats(train[branch], branch) for branch in BRANCHES}
        s = self.section
        fusion = {"stats": stats, "w_audio": s["w_audio"], "w_video": s["w_video"], "weights_from": "config"}
        if s["search_weights"]:
            selected = self._branch_scores(self.selection)
            best = search_fusion_weight(selected["audio"], selected["video"], selected["label"], stats)
            fusion.update(w_audio=best["w_audio"], w_video=best["w_video"],
                          weights_from=f"grid search on {self.selection}", search_i_auroc=best["i_auroc"])
        write_json(self.fusion_path, fusion)
        return fusion

    def score_inputs(self, datasets: dict) -> dict:
        """Score new welds: ``datasets`` maps each branch to a ``WeldingDataset`` of the same runs read with
        ``input_overrides(branch)``. Returns ``sample_id``, each branch's raw autoencoder score and its
        z-score with the TRAIN statistics of ``fusion.json`` (``audio``, ``audio_z``, ``video``, ``video_z``),
        the weights and the fused ``score`` (as ``score``)."""
        fusion = read_json(self.fusion_path, "Late Fusion statistics (written by fit)")
        out = {"w_audio": fusion["w_audio"], "w_video": fusion["w_video"], "weights_from": fusion.get("weights_from")}
        for branch in BRANCHES:
            head = self._head(branch)
            load_selected_weights(head, self.run_dir / "checkpoints" / f"{branch}_best.pt")
            scored = score_loader(head.to(self.device), self.loader(datasets[branch], train=False), self.device,
                                  self.cfg["train"], desc=f"Late Fusion {branch} scores of new welds")
            if "sample_id" in out and out["sample_id"] != scored["sample_id"]:
                raise RuntimeError("Late Fusion: the audio and video loaders of the new welds disagree on the order")
            stats = fusion["stats"][branch]
            out.update({"sample_id": scored["sample_id"], branch: scored["score"],
                        f"{branch}_z": (scored["score"] - stats["mean"]) / stats["std"]})
        out["score"] = fuse_scores(out["audio"], out["video"], fusion["stats"], fusion["w_audio"], fusion["w_video"])
        return out

    def score(self, split: str):
        fusion = read_json(self.fusion_path, "Late Fusion statistics (written by fit)")
        scored = self._branch_scores(split)
        fused = fuse_scores(scored["audio"], scored["video"], fusion["stats"], fusion["w_audio"], fusion["w_video"])
        frame = scores_frame(scored["sample_id"], fused)
        frame["audio_score"], frame["video_score"] = scored["audio"], scored["video"]
        return frame
