"""The M3DM baseline (spec 10.4.2): RGB + pseudo point cloud patch memory banks, decision-layer fusion.

Pipeline of one run:

1. Features (frozen, no gradient): the first post-weld image (ImageNet-normalised) through the DINO
   ViT-B/8 stand-in (``backbones.m3dm_rgb``) gives one feature per 8x8 patch; the sensor table
   becomes a pseudo point cloud (``m3dm_point.pseudo_point_cloud``) whose Point-MAE-style group
   features are carried onto a patch grid as M3DM does: interpolated onto every point of the cloud
   (3 nearest group centres), 3 x 3 average pool, adaptive average pool to ``point_grid`` (M3DM:
   56 x 56, twice the RGB grid; null = the RGB patch grid).
2. "Training": the patches of the good TRAIN runs (at most ``max_train_samples``) form one memory
   bank per modality, standardised and reduced by the greedy coreset (``f_coreset``).
3. Per-modality image score: re-weighted nearest-neighbour distance (``m3dm_bank.reweighted_score``);
   the fused score is a linear ``SGDOneClassSVM`` over ``[point_w * s_point, rgb_w * s_rgb]``,
   fitted on the TRAIN runs' own scores: leave-one-run-out (default; each run is scored with its
   own bank entries hidden) or in-sample (the authors' code: the run's own patches stay visible).
4. Maps: per-modality patch distances, bilinear upsampling to ``map_size``, Gaussian blur, fused
   pixel by pixel by a second one-class SVM. As in M3DM, that seg fuser is fitted on the TRAIN
   runs' maps after the same upsampling and blur (``map_size``^2 rows per run), so it is fitted on
   what it is applied to (pixel metrics are proxies: the data has no masks).

Leak guard: the banks and both fusers see only the good TRAIN runs (the first
``max_train_samples``); their sample ids are recorded in the fusion file (``provenance``). Under
``fair`` each run's fuser features are computed with its own bank entries hidden; under
``paper_faithful`` (``m3dm.fusion_fit_scores: in_sample``) the run's own patches stay in the bank,
as in the authors' runner, so the fusers are fitted on near-zero nearest-neighbour distances of
runs the bank has memorised. Neither protocol lets VAL or TEST reach a bank or a fuser.

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

from weldfilm.methods.m3dm import cache as m3dm_cache
from weldfilm.methods.m3dm.bank import DecisionFuser, PatchBank, distance_maps, reweighted_score
from weldfilm.methods.m3dm.point import (PointTransformer, features_on_patch_grid, load_point_mae_checkpoint,
                                           pseudo_point_cloud)
from weldfilm.data.layout import run_ref
from weldfilm.data.readers import read_sensor_table
from weldfilm.errors import BackboneError, CheckpointError, ConfigError, data_error
from weldfilm.io import atomic_path, read_json, write_json
from weldfilm.methods.base import Method, normal_only_indices, scores_frame
from weldfilm.npy_store import NpyWriter, build_lock
from weldfilm.training.precision import as_fp32, backbone_autocast
from weldfilm.training.progress import progress

METHOD_NAME = "DINO+Point_MAE"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BANKS_FILE = "m3dm_banks.safetensors"
FUSION_FILE = "m3dm_fusion.json"
MODALITY_KEYS = ("point", "rgb")  # the order of the fusion features, as in M3DM ([xyz, rgb])
POINT_TO_PATCH = ("interpolate: group features onto every cloud point (inverse squared distance of the 3 nearest "
                  "centres), AvgPool2d(3, stride 1), AdaptiveAvgPool2d to the point grid (M3DM)")
SEG_FUSER_FIT = ("seg fuser fitted on the TRAIN runs' weighted per-modality maps after bilinear upsampling to map_size "
                 "and the Gaussian blur, the same maps it fuses at scoring (M3DM)")


class M3DMFeatures(nn.Module):
    """Frozen RGB ViT + point transformer -> patch features of both modalities on the ViT patch grid.

    ``rgb_final_norm``: patch tokens after the ViT's final LayerNorm (M3DM) or the last block's
    output before it. ``point_grid``: side of the point features' patch grid (None = the RGB grid).
    ``rgb_patch_size`` / ``rgb_channels``: what the RGB backbone must be (the paper's DINO ViT-B/8:
    8 and 768); None accepts any backbone.
    """

    def __init__(self, rgb_backbone: nn.Module, point_model: PointTransformer, image_size: int,
                 rgb_final_norm: bool = True, point_grid: int | None = None, rgb_patch_size: int | None = None,
                 rgb_channels: int | None = None):
        super().__init__()
        self.rgb_final_norm = rgb_final_norm
        self.rgb_backbone, self.point_model = rgb_backbone.eval(), point_model.eval()
        patch, width = int(rgb_backbone.config.patch_size), int(rgb_backbone.config.hidden_size)
        name = getattr(rgb_backbone, "name_or_path", "") or "the RGB backbone"
        if rgb_patch_size is not None and patch != rgb_patch_size:
            raise BackboneError(f"{name} has patch size {patch}, m3dm.rgb_patch_size expects {rgb_patch_size}; "
                                "point backbones.m3dm_rgb at the DINO ViT-B/8 checkpoint or change the key")
        if rgb_channels is not None and width != rgb_channels:
            raise BackboneError(f"{name} gives {width} channels, m3dm.rgb_channels expects {rgb_channels}; "
                                "point backbones.m3dm_rgb at the DINO ViT-B/8 checkpoint or change the key")
        if image_size % patch:
            raise ConfigError(f"m3dm.image_size {image_size} is not a multiple of the RGB patch size {patch}")
        self.image_size = image_size
        self.grid = (image_size // patch, image_size // patch)
        self.point_grid = (point_grid, point_grid) if point_grid else self.grid
        self.interpolate_pos = image_size != int(rgb_backbone.config.image_size)
        self.shapes: dict[str, list[int]] = {}
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, clouds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images ``(B, 3, H, W)`` in [0, 1], clouds ``(B, 3, S, S)`` -> rgb ``(B, P_rgb, C_rgb)``, point ``(B, P_pt, C_pt)``."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False)
        with backbone_autocast(images.device):  # train.backbone_precision (bf16 on CUDA when set)
            out = self.rgb_backbone(pixel_values=(images - self.mean) / self.std,
                                    interpolate_pos_encoding=self.interpolate_pos,
                                    output_hidden_states=not self.rgb_final_norm)
        tokens = as_fp32(out.last_hidden_state if self.rgb_final_norm else out.hidden_states[-1])
        rgb = tokens[:, 1:]  # drop CLS
        if rgb.shape[1] != self.grid[0] * self.grid[1]:
            raise BackboneError(f"RGB backbone gave {rgb.shape[1]} patch tokens, expected {self.grid} (CLS + patches)")
        features, centres = self.point_model(clouds.flatten(2).transpose(1, 2))
        point = features_on_patch_grid(clouds, centres, features, self.point_grid).flatten(2).transpose(1, 2)
        self.shapes = {"rgb_tokens": list(tokens.shape[1:]), "point_groups": list(features.shape[1:]),
                       "patch_grid": list(self.grid), "point_patch_grid": list(self.point_grid)}
        return rgb.contiguous(), point.contiguous()  # the layout the encoder caches serve (same cdist path)


class M3DMMethod(Method):
    """M3DM as a ``Method``: ``fit`` builds the banks and fusers once (no epochs, no Trainer)."""

    name = "m3dm"
    paper_selection_split = None  # the authors' runner has no model selection
    modalities = ("post_weld_images", "sensor")

    def __init__(self, cfg: dict, run_dir, device=None, feature_dir=None):
        super().__init__(cfg, run_dir, device, feature_dir)
        self.params = cfg["m3dm"]
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self._extractor: M3DMFeatures | None = None
        self.banks: dict[str, PatchBank] | None = None
        self.fusers: dict[str, DecisionFuser] | None = None
        self.provenance: dict | None = None  # sample ids that reached the banks and fusers (leak guard)
        self._shapes: dict[str, list[int]] = {}  # token shapes and patch grids, from extraction or the caches

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
            "point_to_patch": POINT_TO_PATCH,
            "point_patch_grid": p["point_grid"] or "the RGB patch grid",
            "seg_fuser_fit": SEG_FUSER_FIT,
            "fit_data": "banks and fusers: the good TRAIN runs only (ids in checkpoints/m3dm_fusion.json provenance)",
            "encoder_cache": ("frozen encoder outputs from <results>/features/m3dm_{rgb,point}/ (once per split; "
                              "RGB shared by every seed and protocol, point features by the runs of one seed "
                              "unless a Point-MAE checkpoint is given)" if p["encoder_cache"] else "off"),
            "notes": [
                "one method name for fit and score: DINO+Point_MAE (the authors' train.sh used DINO+Point_MAE, "
                "evaluate.sh DINO+Point_MAE+Fusion, whose UFF bank needs fusion weights that do not exist)",
                "fused score = SGDOneClassSVM.score_samples over [point, rgb] scores, as M3DM's two-bank code",
                f"fusers fitted on TRAIN scores: {p['fusion_fit_scores']}"
                + (" (the authors' runner: each run's own patches stay in the bank, near-zero distances)"
                   if p["fusion_fit_scores"] == "in_sample" else " (each run's own bank entries hidden)"),
                "point features to patches: " + POINT_TO_PATCH,
                SEG_FUSER_FIT,
                "M3DM feeds its point transformer only points whose three coordinates are all non-zero (zeros mark "
                "missing points of a scanned organised cloud); the pseudo cloud has no missing points and every point "
                "is used (the spec does not give the authors' coordinate range, so whether their x = 0 / y = 0 border "
                "was dropped is unknown)",
                "pixel metrics are proxies: the welding data has no masks",
                "RGB patch tokens " + ("after" if p["rgb_final_norm"] else "before") + " the ViT's final LayerNorm",
            ],
        })
        return out

    def token_shapes(self) -> dict:
        """Shapes seen at run time: RGB patch tokens, point groups, the RGB and the point patch grids."""
        return dict(self._shapes)

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
            # the expected width is the pretrained checkpoint's; tiny stand-ins (backbones.source: tiny) are narrower
            channels = p["rgb_channels"] if self.cfg["backbones"].get("source") == "pretrained" else None
            self._extractor = M3DMFeatures(rgb, point, p["image_size"], p["rgb_final_norm"], p["point_grid"],
                                           p["rgb_patch_size"], channels).to(self.device)
        return self._extractor

    def _batches(self, split: str, limit: int | None = None, desc: str | None = None):
        """Yield ``(sample_ids, rgb (B,P_rgb,C), point (B,P_pt,C))`` for a split, in manifest order.

        TRAIN keeps its normal runs only (spec 8.3), the first ``limit`` of them. Progress (runs/s,
        ETA) under ``desc``. With ``m3dm.encoder_cache`` the features come from the split's encoder
        caches (built here first when absent or stale, for every run of the split).
        """
        dataset = self.dataset(split, **self.input_overrides())
        keep = list(range(len(dataset)))
        if split.lower() == "train":
            keep = normal_only_indices(dataset.labels, dataset.sample_ids)
            keep = list(keep[:limit] if limit is not None else keep)
        desc = desc or f"M3DM features {split}"
        if not self.params["encoder_cache"]:
            yield from self._extract(torch.utils.data.Subset(dataset, keep), desc)
            return
        (rgb, rgb_meta), (point, point_meta) = (self._encoder_cache(split, dataset)[k] for k in m3dm_cache.KINDS)
        if rgb_meta["sample_ids"] != dataset.sample_ids or point_meta["sample_ids"] != dataset.sample_ids:
            folder = m3dm_cache.cache_path(self.cfg, "rgb", self.seed, split).parent.parent
            raise CheckpointError(f"M3DM encoder caches of {split} do not list the split's runs; delete {folder} "
                                  "and re-run")
        self._shapes = {**rgb_meta["shapes"], **point_meta["shapes"]}
        bar = progress(range(len(keep)), desc + " (encoder cache)", unit="run")
        size = self.params["batch_size"]
        for start in range(0, len(keep), size):
            rows = keep[start:start + size]
            ids = [dataset.sample_ids[i] for i in rows]
            bar.update(len(rows))
            yield (ids, torch.from_numpy(np.ascontiguousarray(rgb[rows])).to(self.device),
                   torch.from_numpy(np.ascontiguousarray(point[rows])).to(self.device))
        bar.close()

    def _extract(self, dataset, desc: str):
        """Run the frozen encoders over ``dataset`` (a split or a Subset of one): ``(ids, rgb, point)`` batches."""
        extractor = self.extractor()
        bar = progress(range(len(dataset)), desc, unit="run")
        for batch in self.loader(dataset, train=False, batch_size=self.params["batch_size"]):
            ids = batch["sample_id"]
            empty = [sid for sid, n in zip(ids, batch["num_images"].tolist()) if n == 0]
            if empty:
                folder = run_ref(empty[0]).files(getattr(dataset, "data_root", None) or self.cfg["data"]["root"])["images"]
                raise data_error(empty[0], folder, "M3DM needs the first post-weld image, the run has none",
                                 "list the run in data.exclude_runs")
            clouds = torch.stack([self._cloud(sid, getattr(dataset, "data_root", None)) for sid in ids])
            rgb, point = extractor(batch["post_weld_images"][:, 0].to(self.device), clouds.to(self.device))
            self._shapes = dict(extractor.shapes)
            bar.update(len(ids))
            yield ids, rgb, point
        bar.close()

    def _encoder_cache(self, split: str, dataset) -> dict[str, tuple[np.ndarray, dict]]:
        """``{kind: (memory-mapped features, sidecar)}`` of the split's current caches; builds the missing ones.

        Jobs wanting the same cache lock it: one builds, the others wait and find it current.
        """
        paths = {k: m3dm_cache.cache_path(self.cfg, k, self.seed, split) for k in m3dm_cache.KINDS}
        keys = {k: m3dm_cache.cache_key(self.cfg, k, self.seed) for k in m3dm_cache.KINDS}
        if not all(m3dm_cache.is_current(paths[k], keys[k]) for k in m3dm_cache.KINDS):
            import contextlib

            with contextlib.ExitStack() as locks:
                for kind in m3dm_cache.KINDS:  # always in this order: no two jobs wait on each other
                    locks.enter_context(build_lock(paths[kind]))
                missing = {k: paths[k] for k in m3dm_cache.KINDS if not m3dm_cache.is_current(paths[k], keys[k])}
                if missing:
                    self._build_encoder_cache(split, dataset, missing, keys)
        return {k: m3dm_cache.open_cache(paths[k]) for k in m3dm_cache.KINDS}

    def _build_encoder_cache(self, split: str, dataset, paths: dict, keys: dict) -> None:
        writer = NpyWriter(paths, len(dataset), what=f"M3DM encoder cache {split}")
        ids: list[str] = []
        try:
            for batch_ids, rgb, point in self._extract(dataset, f"M3DM encoder cache {split}"):
                features = {"rgb": rgb, "point": point}
                writer.write({k: features[k].float().cpu().numpy() for k in paths})
                ids += batch_ids
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        shapes = {"rgb": {k: self._shapes[k] for k in ("rgb_tokens", "patch_grid")},
                  "point": {k: self._shapes[k] for k in ("point_groups", "point_patch_grid")}}
        for kind, path in paths.items():
            m3dm_cache.write_sidecar(path, keys[kind], split, ids, shapes[kind])

    def _cloud(self, sample_id: str, data_root=None) -> torch.Tensor:
        """The pseudo point cloud of a run below ``data_root`` (default ``data.root``; new welds: their own root)."""
        run = run_ref(sample_id)
        table = read_sensor_table(sample_id, run.files(data_root or self.cfg["data"]["root"])["csv"])
        return pseudo_point_cloud(table, self.params["cloud_size"])

    # ------------------------------------------------------------------------------ scoring
    def _sample_scores(self, patches: dict[str, torch.Tensor], exclude_run: int | None = None):
        """Weighted per-modality image scores ``(2,)`` and patch distances ``{key: (P_key,)}`` of one sample."""
        p = self.params
        scores, distances = [], {}
        for key in MODALITY_KEYS:
            bank = self.banks[key]
            allowed = None if exclude_run is None else bank.sources.to(bank.patches.device) != exclude_run
            score, nearest = reweighted_score(bank.standardise(patches[key]), bank.patches, p["n_reweight"],
                                              allowed, p["distance_scale"])
            weight = p[f"{key}_score_weight"]
            scores.append(weight * score.item())
            distances[key] = weight * nearest
        return np.asarray(scores), distances

    def _modality_maps(self, distances: dict[str, torch.Tensor]) -> torch.Tensor:
        """Weighted patch distances ``{key: (B, P_key)}`` -> upsampled, blurred maps ``(B, 2, S, S)`` ([point, rgb])."""
        size, sigma = self.params["map_size"], self.params["blur_sigma"]
        grids = self._grids()
        return torch.stack([distance_maps(distances[key], grids[key], size, sigma) for key in MODALITY_KEYS], 1)

    def _grids(self) -> dict[str, tuple[int, int]]:
        """The patch grids of both modalities (from the features seen, else from the extractor)."""
        if "patch_grid" in self._shapes and "point_patch_grid" in self._shapes:
            return {"rgb": tuple(self._shapes["patch_grid"]), "point": tuple(self._shapes["point_patch_grid"])}
        extractor = self.extractor()
        return {"rgb": extractor.grid, "point": extractor.point_grid}

    def _fused_maps(self, maps: torch.Tensor) -> np.ndarray:
        """Per-modality maps ``(B, 2, S, S)`` -> maps fused by the seg fuser ``(B, S, S)``."""
        coef = torch.as_tensor(self.fusers["seg"].coef, dtype=maps.dtype, device=maps.device)
        return torch.einsum("bmhw,m->bhw", maps, coef).cpu().numpy().astype(np.float32)

    # ------------------------------------------------------------------------------ fit
    def fit(self, resume: bool = False) -> dict:
        if resume and (self.checkpoint_dir / FUSION_FILE).is_file() and (self.checkpoint_dir / BANKS_FILE).is_file():
            self._load()
            return {**read_json(self.checkpoint_dir / FUSION_FILE, "M3DM fusion file")["summary"], "resumed": True}
        p = self.params
        ids, rgb, point = [], [], []
        for batch_ids, batch_rgb, batch_point in self._batches("train", p["max_train_samples"],
                                                               "M3DM memory bank: TRAIN features"):
            ids += batch_ids
            rgb.append(batch_rgb)
            point.append(batch_point)
        if len(ids) < 2:
            raise ConfigError(f"M3DM needs at least 2 good TRAIN runs in the manifest, found {len(ids)}")
        patches = {"rgb": torch.cat(rgb), "point": torch.cat(point)}
        self.banks, coreset = {}, {}
        for key in MODALITY_KEYS:
            per_sample = patches[key].shape[1]
            sources = torch.arange(len(ids)).repeat_interleave(per_sample)
            flat = patches[key].reshape(-1, patches[key].shape[-1])
            self.banks[key], coreset[key] = PatchBank.build(flat, sources, p["f_coreset"], p["coreset_eps"], self.seed,
                                                            f"M3DM coreset ({key} bank)")
            if "projection_skipped" in coreset[key]:
                self.notes.append(f"{key} coreset without random projection: {coreset[key]['projection_skipped']}")
        leave_out = p["fusion_fit_scores"] == "leave_one_run_out"
        image_rows, map_rows = [], []
        for index in progress(range(len(ids)), "M3DM fusion fit: TRAIN scores and maps", unit="run"):
            scores, distances = self._sample_scores({k: patches[k][index] for k in MODALITY_KEYS},
                                                    index if leave_out else None)
            image_rows.append(scores)
            maps = self._modality_maps({key: d.unsqueeze(0) for key, d in distances.items()})[0]  # (2, S, S)
            map_rows.append(maps.flatten(1).T.cpu().numpy())  # one row [point, rgb] per map pixel, as applied
        fuser_args = (p["ocsvm_nu"], p["ocsvm_max_iter"], p["ocsvm_seed"])
        self.fusers = {"detect": DecisionFuser(*fuser_args).fit(np.stack(image_rows)),
                       "seg": DecisionFuser(*fuser_args).fit(np.concatenate(map_rows))}
        grids = self._grids()
        summary = {"method_name": METHOD_NAME, "train_runs": len(ids),
                   "patches_per_run": {k: int(patches[k].shape[1]) for k in MODALITY_KEYS},
                   "patch_grid": list(grids["rgb"]), "point_patch_grid": list(grids["point"]),
                   "point_to_patch": POINT_TO_PATCH, "seg_fuser_fit": SEG_FUSER_FIT,
                   "seg_fuser_rows": int(sum(len(rows) for rows in map_rows)), "coreset": coreset,
                   "fusion_fit_scores": p["fusion_fit_scores"], "fusion_order": list(MODALITY_KEYS),
                   "detect_coef": self.fusers["detect"].coef.tolist(), "seg_coef": self.fusers["seg"].coef.tolist(),
                   "feature_dims": {k: int(patches[k].shape[-1]) for k in MODALITY_KEYS}}
        # Leak guard: the ids of every run that reached a bank or a fuser (all good TRAIN runs).
        self.provenance = {"split": "train", "bank_sample_ids": list(ids), "fuser_sample_ids": list(ids),
                           "fusion_fit_scores": p["fusion_fit_scores"]}
        self._save(summary)
        return summary

    def _save(self, summary: dict) -> None:
        from safetensors.torch import save_file

        tensors = {}
        for key, bank in self.banks.items():
            tensors.update(bank.state(key))
        with atomic_path(self.checkpoint_dir / BANKS_FILE) as tmp:
            save_file(tensors, str(tmp))
        write_json(self.checkpoint_dir / FUSION_FILE, {"summary": summary, "provenance": self.provenance,
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
        self.provenance = state.get("provenance")

    # ------------------------------------------------------------------------------ evaluation
    def _evaluate(self, split: str) -> tuple[pd.DataFrame, np.ndarray]:
        """Scores and maps of a split: one pass per method object for ``score`` and ``anomaly_maps`` (``Method.split_result``)."""
        fitted = [self.checkpoint_dir / BANKS_FILE, self.checkpoint_dir / FUSION_FILE]
        return self.split_result(split, fitted, lambda: self._score_split(split))

    def _score_split(self, split: str) -> tuple[pd.DataFrame, np.ndarray]:
        return self._score_batches(self._batches(split, desc=f"M3DM scoring {split}"))

    def score_inputs(self, dataset) -> tuple[pd.DataFrame, np.ndarray]:
        """Score the runs of ``dataset`` (a ``WeldingDataset`` of new welds read with ``input_overrides``)
        with the fitted banks and fusers, through the frozen encoders (no encoder cache: the runs are in
        no split): the frame of ``score`` and the fused maps of the first photo, as ``_score_split``."""
        return self._score_batches(self._extract(dataset, "M3DM scoring new welds"))

    def input_overrides(self) -> dict:
        """Dataset arguments of the runs M3DM reads: the first photo at ``m3dm.image_size`` (+ the sensor table)
        (``weldfilm.data.store.m3dm_arguments``: the decoded-input store reads the same)."""
        from weldfilm.data.store import m3dm_arguments

        return m3dm_arguments(self.cfg)

    def _score_batches(self, batches) -> tuple[pd.DataFrame, np.ndarray]:
        """``(ids, rgb, point)`` batches -> the scores frame (fused + per modality) and the fused maps."""
        if self.banks is None:
            self._load()
        ids, rows, maps = [], [], []
        for batch_ids, rgb, point in batches:
            per_sample = [self._sample_scores({"rgb": rgb[i], "point": point[i]}) for i in range(len(batch_ids))]
            rows += [scores for scores, _ in per_sample]
            distances = {key: torch.stack([d[key] for _, d in per_sample]) for key in MODALITY_KEYS}
            maps.append(self._fused_maps(self._modality_maps(distances)))
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
