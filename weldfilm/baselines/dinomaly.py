"""The Dinomaly baseline as a ``Method`` (paper section 10.4.3).

Image-only: every post-weld photo of a good TRAIN run is a training sample (resize -> centre crop ->
ImageNet normalisation), reconstructed through a frozen DINOv2-with-registers encoder, a noisy
bottleneck and a linear-attention decoder. Fitted by the shared ``Trainer`` with StableAdamW, a
per-iteration warm-up + cosine schedule and gradient clipping. A run's score is the max or mean
(``dinomaly.run_aggregation``) over its images of the max (or top-ratio mean) of the blurred
``1 - cos`` map.
"""

from __future__ import annotations

import numpy as np
import torch

from weldfilm.baselines.dinomaly_model import DinomalyHead, default_layer_groups
from weldfilm.baselines.optim import StableAdamW
from weldfilm.baselines.common import MemoryCachedDataset, fair_selection_split
from weldfilm.methods import Method, normal_only_subset, scores_frame
from weldfilm.training import autocast_context, load_selected_weights, move_to_device, warmup_cosine_scheduler


class DinomalyTrainable(DinomalyHead):
    """``DinomalyHead`` built from the ``dinomaly`` config section, with its StableAdamW schedule."""

    def __init__(self, encoder, section: dict):
        groups = section["layer_groups"] or default_layer_groups(encoder.config.num_hidden_layers)
        super().__init__(encoder, groups, section["decoder_depth"], section["crop_size"], section["dropout"],
                         section["bottleneck_ratio"], section["map_size"], section["blur_sigma"],
                         section["score_top_ratio"], section["hard_ratio"], section["hard_ramp_iters"],
                         section["easy_factor"], section["run_aggregation"])
        self.section = section

    def configure_optimizer(self, train_cfg: dict, steps_per_epoch: int):
        s = self.section
        trainable = [p for p in self.parameters() if p.requires_grad]
        optimizer = StableAdamW(trainable, lr=s["lr"], weight_decay=s["weight_decay"], eps=s["eps"],
                                amsgrad=s["amsgrad"])
        scheduler = warmup_cosine_scheduler(optimizer, total_steps=train_cfg["epochs"] * max(1, steps_per_epoch),
                                            min_lr=s["final_lr"], warmup_steps=s["warmup_iters"])
        return optimizer, scheduler, "step"


class DinomalyMethod(Method):
    """Frozen DINOv2-reg encoder + trained bottleneck/decoder; image-level reconstruction scores."""

    name = "dinomaly"
    paper_selection_split = "test"  # the authors saved best_model.pth by TEST AUROC
    modalities = ("post_weld_images",)

    def __init__(self, cfg: dict, run_dir, device=None):
        super().__init__(cfg, run_dir, device)
        self.section = cfg["dinomaly"]
        self.selection = fair_selection_split(self)
        self.best_path = self.run_dir / "checkpoints" / "best.pt"
        self._datasets: dict = {}
        self._encoder = None  # the frozen encoder, loaded once and shared by every head of this object
        self._selected: DinomalyTrainable | None = None  # best.pt loaded, once per fit
        self._results: dict[str, tuple] = {}  # split -> (scores frame, maps), one pass per fit

    def _head(self) -> DinomalyTrainable:
        if self._encoder is None:
            from transformers import Dinov2WithRegistersModel

            from weldfilm.models.backbones import load_pretrained

            self._encoder = load_pretrained(self.cfg["backbones"]["dinomaly_encoder"], Dinov2WithRegistersModel)
        return DinomalyTrainable(self._encoder, self.section)

    def _loader(self, split: str, train: bool = False):
        if split not in self._datasets:
            dataset = self.dataset(split, augment=False, image_size=self.section["resize"])
            self._datasets[split] = MemoryCachedDataset(dataset) if self.section["cache_inputs"] else dataset
        dataset = self._datasets[split]
        if train:
            dataset = normal_only_subset(dataset)
        return self.loader(dataset, train, batch_size=self.section["batch_size"] if train else None)

    def _train_cfg(self) -> dict:
        s = self.section
        return {**self.cfg["train"], "epochs": s["epochs"], "lr": s["lr"], "weight_decay": s["weight_decay"],
                "gradient_clip": s["gradient_clip"], "use_ema": False, "warmup_epochs": 0,
                "early_stopping_patience": 0}

    # -------------------------------------------------------------------------------------- API
    def uses_augmentation(self) -> bool:
        return False  # deterministic resize / crop / normalise, as the authors' adapter

    def input_resolution(self) -> dict:
        s = self.section
        return {"post_weld_images": {"views": self.cfg["preprocess"]["num_angles"], "resize": s["resize"],
                                     "crop": s["crop_size"], "normalisation": "ImageNet"}}

    def describe(self) -> dict:
        s = self.section
        image_score = "the max pixel" if s["score_top_ratio"] <= 0 else f"the top-{s['score_top_ratio']:g} pixel mean"
        return {**super().describe(), "selection_split": self.selection,
                "training_samples": "every post-weld image of a good TRAIN run",
                "run_score": f"{s['run_aggregation']} over the run's images of {image_score}"}

    def fit(self, resume: bool = False) -> dict:
        self._selected, self._results = None, {}
        head = self._head()
        result = self.trainer("", self._train_cfg()).fit(head, self._loader("train", train=True),
                                                        self._loader(self.selection), resume)
        return {"selection_split": self.selection, "layer_groups": head.layer_groups, **result.to_dict()}

    def _selected_head(self) -> DinomalyTrainable:
        if self._selected is None:
            head = self._head()
            load_selected_weights(head, self.best_path)
            self._selected = head.to(self.device).eval()
        return self._selected

    @torch.no_grad()
    def _evaluate(self, split: str) -> tuple:
        """Scores and best-image maps of ``split`` from one pass of the selected head (``score`` and
        ``anomaly_maps`` share it)."""
        if split not in self._results:
            head, ids, scores, maps = self._selected_head(), [], [], []
            for batch in self._loader(split):
                batch = move_to_device(batch, self.device)
                with autocast_context(self.device, self.cfg["train"]):
                    run_scores, best_maps = head.scores_and_maps(batch)
                ids += batch["sample_id"]
                scores.append(run_scores.float().cpu())
                maps.append(best_maps.float().cpu())
            frame = scores_frame(ids, torch.cat(scores).numpy().astype(np.float64))
            self._results[split] = (frame, torch.cat(maps).numpy())
        return self._results[split]

    def score(self, split: str):
        return self._evaluate(split)[0]

    def anomaly_maps(self, split: str) -> np.ndarray:
        """Per run, the map ``(map_size, map_size)`` of its highest-scoring image, in ``score`` order."""
        return self._evaluate(split)[1]
