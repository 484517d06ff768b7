"""The M3DM baseline (spec 10.4.2): RGB + pseudo point cloud patch memory banks, decision-layer fusion.

Pipeline of one run:

1. Features (frozen, no gradient): the first post-weld image (ImageNet-normalised) through the DINO
   ViT-B/8 stand-in (``backbones.m3dm_rgb``) gives one feature per 8x8 patch; the sensor table
   becomes a pseudo point cloud (``m3dm_point.pseudo_point_cloud``) whose Point-MAE-style features
   are carried onto the same patch grid (nearest group centre of each patch).
2. "Training": the patches of the good TRAIN runs (at most ``max_train_samples``) form one memory
   bank per modality, standardised and reduced by the greedy coreset (``f_coreset``).
3. Per-modality image score: re-weighted nearest-neighbour distance (``m3dm_bank.reweighted_score``);
   the fused score is a linear ``SGDOneClassSVM`` over ``[point_w * s_point, rgb_w * s_rgb]``,
   fitted on the TRAIN runs' own scores: leave-one-run-out (default; each run is scored with its
   own bank entries hidden) or in-sample (the authors' code: the run's own patches stay visible).
4. Maps: per-patch distances, bilinear upsampling, Gaussian blur, fused by a second one-class SVM
   (pixel metrics are proxies: the data has no masks).

One method name for fitting and scoring: ``DINO+Point_MAE`` (two banks + decision fusion). The
authors' train.sh used it while evaluate.sh asked for ``DINO+Point_MAE+Fusion``, whose extra UFF
bank needs contrastively pretrained fusion weights that do not exist here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from weldfilm.baselines.common import SplitResultMemo
from weldfilm.baselines.m3dm_bank import DecisionFuser, PatchBank, distance_maps, reweighted_score
from weldfilm.baselines.m3dm_point import (PointTransformer, features_on_patch_grid, load_point_mae_checkpoint,
                                           pseudo_point_cloud)
from weldfilm.data.layout import run_ref
from weldfilm.data.readers import read_sensor_table
from weldfilm.errors import BackboneError, CheckpointError, ConfigError, data_error
from weldfilm.io import atomic_path, read_json, write_json
from weldfilm.methods import Method, normal_only_indices, scores_frame

METHOD_NAME = "DINO+Point_MAE"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BANKS_FILE = "m3dm_banks.safetensors"
FUSION_FILE = "m3dm_fusion.json"
MODALITY_KEYS = ("point", "rgb")  # the order of the fusion features, as in M3DM ([xyz, rgb])
SPLIT_RESULTS = SplitResultMemo()  # (scores, maps) per run and split, shared by the method objects of a process


class M3DMFeatures(nn.Module):
    """Frozen RGB ViT + point transformer -> patch features of both modalities on the ViT patch grid.

    ``rgb_final_norm``: patch tokens after the ViT's final LayerNorm (M3DM) or the last block's
    output before it.
    """

    def __init__(self, rgb_backbone: nn.Module, point_model: PointTransformer, image_size: int,
                 rgb_final_norm: bool = True):
        super().__init__()
        self.rgb_final_norm = rgb_final_norm
        self.rgb_backbone, self.point_model = rgb_backbone.eval(), point_model.eval()
        patch = int(rgb_backbone.config.patch_size)
        if image_size % patch:
            raise ConfigError(f"m3dm.image_size {image_size} is not a multiple of the RGB patch size {patch}")
        self.image_size = image_size
        self.grid = (image_size // patch, image_size // patch)
        self.interpolate_pos = image_size != int(rgb_backbone.config.image_size)
        self.shapes: dict[str, list[int]] = {}
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, clouds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images ``(B, 3, H, W)`` in [0, 1], clouds ``(B, 3, S, S)`` -> rgb ``(B, P, C_rgb)``, point ``(B, P, C_pt)``."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False)
        out = self.rgb_backbone(pixel_values=(images - self.mean) / self.std,
                                interpolate_pos_encoding=self.interpolate_pos, output_hidden_states=not self.rgb_final_norm)
        tokens = out.last_hidden_state if self.rgb_final_norm else out.hidden_states[-1]
        rgb = tokens[:, 1:]  # drop CLS
        if rgb.shape[1] != self.grid[0] * self.grid[1]:
            raise BackboneError(f"RGB backbone gave {rgb.shape[1]} patch tokens, expected {self.grid} (CLS + patches)")
        features, centres = self.point_model(clouds.flatten(2).transpose(1, 2))
        point = features_on_patch_grid(clouds, centres, features, self.grid).flatten(2).transpose(1, 2)
        self.shapes = {"rgb_tokens": list(tokens.shape[1:]), "point_groups": list(features.shape[1:]),
                       "patch_grid": list(self.grid)}
        return rgb, point


class M3DMMethod(Method):
    """M3DM as a ``Method``: ``fit`` builds the banks and fusers once (no epochs, no Trainer)."""

    name = "m3dm"
    paper_selection_split = None  # the authors' runner has no model selection
    modalities = ("post_weld_images", "sensor")

    def __init__(self, cfg: dict, run_dir, device=None):
        super().__init__(cfg, run_dir, device)
        self.params = cfg["m3dm"]
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self._extractor: M3DMFeatures | None = None
        self.banks: dict[str, PatchBank] | None = None
        self.fusers: dict[str, DecisionFuser] | None = None

    # ------------------------------------------------------------------------------ description
    @property
    def selection_split(self) -> None:
        """Nothing is selected: banks and fusers are fitted once on TRAIN."""
        return None

    def uses_augmentation(self) -> bool:
        return False

    def input_resolution(self) -> dict:
        p = self.params
        return {"post_weld_images": {"views": 1, "size": p["image_size"], "which": "first image by name"},
                "sensor": {"pseudo_point_cloud": [3, p["cloud_size"], p["cloud_size"]]}}

    def describe(self) -> dict:
        p = self.params
        out = super().describe()
        checkpoint = p["point_mae_checkpoint"]
        out.update({
            "method_name": METHOD_NAME,
            "training_split": "TRAIN (good runs only; memory banks, no gradient training)",
            "rgb_backbone": self.cfg["backbones"]["m3dm_rgb"],
            "point_backbone": (f"Point-MAE weights from {checkpoint}" if checkpoint else
                               "random-init frozen PointTransformer (no Point-MAE weights available)"),
            "fusion_fit_scores": p["fusion_fit_scores"],
            "notes": [
                "one method name for fit and score: DINO+Point_MAE (the authors' train.sh used DINO+Point_MAE, "
                "evaluate.sh DINO+Point_MAE+Fusion, whose UFF bank needs fusion weights that do not exist)",
                "fused score = SGDOneClassSVM.score_samples over [point, rgb] scores, as M3DM's two-bank code",
                f"fusers fitted on TRAIN scores: {p['fusion_fit_scores']}",
                "pixel metrics are proxies: the welding data has no masks",
                "RGB patch tokens " + ("after" if p["rgb_final_norm"] else "before") + " the ViT's final LayerNorm",
            ],
        })
        return out

    def token_shapes(self) -> dict:
        """Shapes seen at run time: RGB patch tokens, point groups, and the shared patch grid."""
        return dict(self._extractor.shapes) if self._extractor is not None else {}

    # ------------------------------------------------------------------------------ features
    def extractor(self) -> M3DMFeatures:
        """The frozen feature extractor (built once; the point transformer is seeded by the run seed)."""
        if self._extractor is None:
            from transformers import ViTModel

            from weldfilm.models.backbones import load_pretrained

            p = self.params
            with torch.random.fork_rng(devices=[]):  # seed the random init without touching the global RNG
                torch.manual_seed(self.seed)
                point = PointTransformer(p["point_trans_dim"], p["point_depth"], p["point_heads"],
                                         p["point_group_size"], p["point_num_groups"], tuple(p["point_taps"]))
            if p["point_mae_checkpoint"]:
                self.notes.append(str(load_point_mae_checkpoint(point, p["point_mae_checkpoint"])))
            rgb = load_pretrained(self.cfg["backbones"]["m3dm_rgb"], ViTModel)
            self._extractor = M3DMFeatures(rgb, point, p["image_size"], p["rgb_final_norm"]).to(self.device)
        return self._extractor

    def _batches(self, split: str, limit: int | None = None):
        """Yield ``(sample_ids, rgb (B,P,C), point (B,P,C))`` for a split, in manifest order.

        TRAIN keeps its normal runs only (spec 8.3), the first ``limit`` of them.
        """
        dataset = self.dataset(split, modalities=("post_weld_images",), num_angles=1,
                               image_size=self.params["image_size"])
        if split.lower() == "train":
            keep = normal_only_indices(dataset.labels, dataset.sample_ids)
            dataset = torch.utils.data.Subset(dataset, keep[:limit] if limit is not None else keep)
        extractor = self.extractor()
        for batch in self.loader(dataset, train=False, batch_size=self.params["batch_size"]):
            ids = batch["sample_id"]
            empty = [sid for sid, n in zip(ids, batch["num_images"].tolist()) if n == 0]
            if empty:
                folder = run_ref(empty[0]).files(self.cfg["data"]["root"])["images"]
                raise data_error(empty[0], folder, "M3DM needs the first post-weld image, the run has none",
                                 "list the run in data.exclude_runs")
            clouds = torch.stack([self._cloud(sid) for sid in ids])
            rgb, point = extractor(batch["post_weld_images"][:, 0].to(self.device), clouds.to(self.device))
            yield ids, rgb, point

    def _cloud(self, sample_id: str) -> torch.Tensor:
        run = run_ref(sample_id)
        table = read_sensor_table(sample_id, run.files(self.cfg["data"]["root"])["csv"])
        return pseudo_point_cloud(table, self.params["cloud_size"])

    # ------------------------------------------------------------------------------ scoring
    def _sample_scores(self, patches: dict[str, torch.Tensor], exclude_run: int | None = None):
        """Weighted per-modality image scores ``(2,)`` and patch distances ``(2, P)`` of one sample."""
        p = self.params
        scores, distances = [], []
        for key in MODALITY_KEYS:
            bank = self.banks[key]
            allowed = None if exclude_run is None else bank.sources.to(bank.patches.device) != exclude_run
            score, nearest = reweighted_score(bank.standardise(patches[key]), bank.patches, p["n_reweight"],
                                              allowed, p["distance_scale"])
            weight = p[f"{key}_score_weight"]
            scores.append(weight * score.item())
            distances.append(weight * nearest)
        return np.asarray(scores), torch.stack(distances)

    def _fused_maps(self, distances: torch.Tensor) -> np.ndarray:
        """Per-modality patch distances ``(B, 2, P)`` -> fused, blurred maps ``(B, S, S)``."""
        size, sigma = self.params["map_size"], self.params["blur_sigma"]
        grid = self.extractor().grid
        maps = torch.stack([distance_maps(distances[:, m], grid, size, sigma) for m in range(len(MODALITY_KEYS))], 1)
        coef = torch.as_tensor(self.fusers["seg"].coef, dtype=maps.dtype, device=maps.device)
        return torch.einsum("bmhw,m->bhw", maps, coef).cpu().numpy().astype(np.float32)

    # ------------------------------------------------------------------------------ fit
    def fit(self, resume: bool = False) -> dict:
        if resume and (self.checkpoint_dir / FUSION_FILE).is_file() and (self.checkpoint_dir / BANKS_FILE).is_file():
            self._load()
            return {**read_json(self.checkpoint_dir / FUSION_FILE, "M3DM fusion file")["summary"], "resumed": True}
        p = self.params
        ids, rgb, point = [], [], []
        for batch_ids, batch_rgb, batch_point in self._batches("train", p["max_train_samples"]):
            ids += batch_ids
            rgb.append(batch_rgb)
            point.append(batch_point)
        if len(ids) < 2:
            raise ConfigError(f"M3DM needs at least 2 good TRAIN runs in the manifest, found {len(ids)}")
        patches = {"rgb": torch.cat(rgb), "point": torch.cat(point)}
        per_sample = patches["rgb"].shape[1]
        sources = torch.arange(len(ids)).repeat_interleave(per_sample)
        self.banks, coreset = {}, {}
        for key in MODALITY_KEYS:
            flat = patches[key].reshape(-1, patches[key].shape[-1])
            self.banks[key], coreset[key] = PatchBank.build(flat, sources, p["f_coreset"], p["coreset_eps"], self.seed)
            if "projection_skipped" in coreset[key]:
                self.notes.append(f"{key} coreset without random projection: {coreset[key]['projection_skipped']}")
        leave_out = p["fusion_fit_scores"] == "leave_one_run_out"
        image_rows, patch_rows = [], []
        for index in range(len(ids)):
            scores, distances = self._sample_scores({k: patches[k][index] for k in MODALITY_KEYS},
                                                    index if leave_out else None)
            image_rows.append(scores)
            patch_rows.append(distances.T.cpu().numpy())
        fuser_args = (p["ocsvm_nu"], p["ocsvm_max_iter"], p["ocsvm_seed"])
        self.fusers = {"detect": DecisionFuser(*fuser_args).fit(np.stack(image_rows)),
                       "seg": DecisionFuser(*fuser_args).fit(np.concatenate(patch_rows))}
        summary = {"method_name": METHOD_NAME, "train_runs": len(ids), "patches_per_run": per_sample,
                   "patch_grid": list(self.extractor().grid), "coreset": coreset,
                   "fusion_fit_scores": p["fusion_fit_scores"], "fusion_order": list(MODALITY_KEYS),
                   "detect_coef": self.fusers["detect"].coef.tolist(), "seg_coef": self.fusers["seg"].coef.tolist(),
                   "feature_dims": {k: int(patches[k].shape[-1]) for k in MODALITY_KEYS}}
        self._save(summary)
        return summary

    def _save(self, summary: dict) -> None:
        from safetensors.torch import save_file

        tensors = {}
        for key, bank in self.banks.items():
            tensors.update(bank.state(key))
        with atomic_path(self.checkpoint_dir / BANKS_FILE) as tmp:
            save_file(tensors, str(tmp))
        write_json(self.checkpoint_dir / FUSION_FILE, {"summary": summary,
                                                       "fusers": {k: f.state() for k, f in self.fusers.items()}})

    def _load(self) -> None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.checkpoint_dir / BANKS_FILE
        if not path.is_file():
            raise CheckpointError(f"M3DM memory banks {path} do not exist; run `weldfilm train --method m3dm` first")
        try:
            tensors = load_file(str(path), device=str(self.device))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"M3DM memory banks {path} are corrupt ({exc}); delete them and re-train") from exc
        self.banks = {key: PatchBank.from_state(tensors, key) for key in MODALITY_KEYS}
        state = read_json(self.checkpoint_dir / FUSION_FILE, "M3DM fusion file")
        self.fusers = {key: DecisionFuser.from_state(value) for key, value in state["fusers"].items()}

    # ------------------------------------------------------------------------------ evaluation
    def _evaluate(self, split: str) -> tuple[pd.DataFrame, np.ndarray]:
        """Scores and maps of a split: one pass per process for ``score`` and ``anomaly_maps`` (``SPLIT_RESULTS``)."""
        fitted = [self.checkpoint_dir / BANKS_FILE, self.checkpoint_dir / FUSION_FILE]
        return SPLIT_RESULTS.get_or_compute(self.run_dir, split, self.cfg, fitted, lambda: self._score_split(split))

    def _score_split(self, split: str) -> tuple[pd.DataFrame, np.ndarray]:
        if self.banks is None:
            self._load()
        ids, rows, maps = [], [], []
        for batch_ids, rgb, point in self._batches(split):
            per_sample = [self._sample_scores({"rgb": rgb[i], "point": point[i]}) for i in range(len(batch_ids))]
            rows += [scores for scores, _ in per_sample]
            maps.append(self._fused_maps(torch.stack([d for _, d in per_sample])))
            ids += batch_ids
        modality = np.stack(rows)
        frame = scores_frame(ids, self.fusers["detect"].score(modality))
        for column, key in enumerate(MODALITY_KEYS):
            frame[f"score_{key}"] = modality[:, column]
        return frame, np.concatenate(maps)

    def score(self, split: str) -> pd.DataFrame:
        """``sample_id, score`` (fused) plus the weighted per-modality scores ``score_point, score_rgb``."""
        return self._evaluate(split)[0].copy()

    def anomaly_maps(self, split: str) -> np.ndarray:
        """Fused anomaly maps ``(N, map_size, map_size)`` in ``score`` order (pixel metrics: proxies)."""
        return self._evaluate(split)[1]
