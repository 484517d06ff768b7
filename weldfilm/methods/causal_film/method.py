"""Causal-FiLM as a Method: frozen-backbone features (cached or on the fly) -> CausalFiLMHead -> shared Trainer.

Training subset: the normal-only heuristic of spec 8.3 on TRAIN. Features of a split come from the
feature cache when ``train.feature_cache`` is on and the split is not augmented, otherwise from the
backbones on the fly; both paths go through the same ``FrozenBackbones.extract``. The checkpoint is
selected on the protocol's selection split (VAL for Causal-FiLM), and ``score`` uses ``best.pt``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from weldfilm.paths import cached_splits
from weldfilm.features import (CAUSAL_FILM_MODALITIES, FeatureDataset, build_feature_cache, cache_file, cache_is_current,
                               cache_key, default_feature_dir, feature_loader)
from weldfilm.methods.base import Method, normal_only_indices, scores_frame
from weldfilm.training import load_selected_weights, score_loader, seed_everything
from weldfilm.training.loaders import make_loader
from weldfilm.training.trainer import fit_members


class ExtractingLoader:
    """Wraps a data loader: yields ``backbones.extract(batch)`` (exposes the loader's dataset and samplers)."""

    def __init__(self, loader, backbones):
        self.loader, self.backbones = loader, backbones
        self.dataset, self.sampler, self.generator = loader.dataset, loader.sampler, loader.generator
        self.batch_sampler = loader.batch_sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield self.backbones.extract(batch)


class DecodedOnce:
    """``WeldingDataset.read_arrays`` that decodes each run once and keeps its arrays (``train.cache_inputs``).

    The section-8.6 augmentation functions return new arrays and never change their input, so an augmented
    split reads every run's files once and draws a fresh augmentation of the kept arrays every epoch: the
    same samples as decoding each epoch, without the decoding.
    """

    def __init__(self, read_arrays):
        self.read_arrays, self.arrays = read_arrays, {}

    def __call__(self, index: int) -> dict:
        if index not in self.arrays:
            self.arrays[index] = self.read_arrays(index)
        return self.arrays[index]


class CausalFiLMMethod(Method):
    name = "causal_film"
    paper_selection_split = "val"
    modalities = CAUSAL_FILM_MODALITIES

    def __init__(self, cfg: dict, run_dir: Path, device=None, feature_dir=None):
        super().__init__(cfg, run_dir, device, feature_dir)
        self.feature_dir = Path(feature_dir) if feature_dir else default_feature_dir(cfg)
        self._backbones = None
        self._cache_key = None
        self._meta: dict | None = None      # dims, text embedding, token shapes (from a cache or the backbones)
        self._data: dict = {}                # split -> its dataset, opened once per object
        self._selected = None                # the head with best.pt loaded, once per fit
        self.feature_source: dict[str, str] = {}

    # ------------------------------------------------------------------------------ features
    def backbones(self):
        if self._backbones is None:
            from weldfilm.models.backbones import FrozenBackbones

            self._backbones = FrozenBackbones.from_config(self.cfg, self.device)
        return self._backbones

    def uses_cache(self, split: str) -> bool:
        return split.lower() in cached_splits(self.cfg)  # the workflow builds exactly these caches

    def split_data(self, split: str):
        """The split's dataset (FeatureDataset or WeldingDataset), with ``labels`` and ``sample_ids``."""
        split = split.lower()
        if split not in self._data:
            self._data[split] = self._open_split(split)
        return self._data[split]

    def _open_split(self, split: str):
        if self.uses_cache(split):
            if self._cache_key is None:
                self._cache_key = cache_key(self.cfg)
            path = cache_file(self.feature_dir, split)
            if not cache_is_current(path, self._cache_key):
                build_feature_cache(self.cfg, split, path, backbones=self.backbones(), device=self.device)
            data = FeatureDataset(path, self._cache_key)
            self.feature_source[split] = f"cache {path}"
            if self._meta is None:
                self._meta = {"dims": data.dims, "text_embedding": data.text_embedding,
                              "token_shapes": data.meta["token_shapes"], "text": data.meta["text"]}
            return data
        data = self.dataset(split, augment=None)
        if data.augment and self.cfg["train"].get("cache_inputs", True):
            data.read_arrays = DecodedOnce(data.read_arrays)  # augmented afresh each epoch from the kept arrays
        self.feature_source[split] = "backbones on the fly" + (" (augmented)" if data.augment else "")
        return data

    def loader_of(self, data, train: bool, indices=None):
        """Batches of feature dicts for ``data`` (restricted to ``indices``), shuffled when training."""
        subset = torch.utils.data.Subset(data, indices) if indices is not None else data
        t = self.cfg["train"]
        size = t["batch_size"] if train else t.get("eval_batch_size", 32)
        if isinstance(data, FeatureDataset):
            return feature_loader(subset, size, shuffle=train, seed=self.seed)
        loader = make_loader(subset, size, shuffle=train, seed=self.seed, num_workers=t.get("num_workers", 0))
        return ExtractingLoader(loader, self.backbones())

    def meta(self) -> dict:
        """Backbone dims, CLIP text embedding (or None) and token shapes, read once."""
        if self._meta is None:
            backbones = self.backbones()
            prompt = self.cfg["loss"].get("text_prompt", "a normal weld")
            available = backbones.clip_model is not None
            self._meta = {"dims": backbones.dims, "token_shapes": backbones.token_shapes(),
                          "text_embedding": backbones.text_embedding(prompt).cpu() if available else None,
                          "text": {"prompt": prompt, "available": available}}
        return self._meta

    def build_head(self):
        from weldfilm.methods.causal_film.model import CausalFiLMHead

        meta = self.meta()
        text = meta["text_embedding"] if self.cfg["loss"].get("lambda_text", 0.0) > 0 else None
        return CausalFiLMHead.from_config(self.cfg, meta["dims"], text).to(self.device)

    # ------------------------------------------------------------------------------ contract
    def fit(self, resume: bool = False) -> dict:
        return self.fit_together([self], [resume])[0]

    @classmethod
    def fit_together(cls, methods: list["CausalFiLMMethod"], resumes: list[bool]) -> list[dict]:
        """Fit runs with one TRAIN stream (``weldfilm.run_keys.train_stream_key``) in lockstep: the first
        run's loader makes each batch once (one ``FrozenBackbones.extract`` per batch when TRAIN is not
        cached) and every run's head trains on it, each exactly as alone (``weldfilm.training.fit_members``).
        The other runs share the first one's backbones and TRAIN data; each keeps its VAL selection.
        Returns each run's fit summary, in order."""
        lead = methods[0]
        train = lead.split_data("train")
        keep = normal_only_indices(train.labels, train.sample_ids)
        loader = lead.loader_of(train, train=True, indices=keep)
        members = []
        for method, resume in zip(methods, resumes):
            if method is not lead:
                method.feature_source["train"] = lead.feature_source["train"]
                if not lead.uses_cache("train"):
                    method._backbones = lead._backbones  # the frozen backbones of the one live pass
            method._selected = None
            method.notes.append(f"training subset: {len(keep)} of {len(train)} TRAIN samples are normal "
                                "(spec 8.3 heuristic)")
            selection = method.selection_split
            val_loader = method.loader_of(method.split_data(selection), train=False) if selection else None
            seed_everything(method.seed)
            head = method.build_head()
            members.append(method.trainer().member(head, loader, val_loader, resume=resume, select_on="auroc"))
        if len(methods) > 1:
            print(f"Causal-FiLM: {len(methods)} runs trained in lockstep on one TRAIN stream "
                  f"({lead.feature_source.get('train', 'TRAIN')}): " + ", ".join(str(m.run_dir) for m in methods))
        summaries = []
        for method, member, result in zip(methods, members, fit_members(members, loader)):
            method.notes.extend(result.notes)
            method.head_description = member.head.describe()
            summaries.append({**result.to_dict(), "train_samples": len(keep), "head": method.head_description})
        return summaries

    def selected_head(self):
        """The head with the run's selected weights (``best.pt``), loaded once after each fit."""
        if self._selected is None:
            self._selected = self.build_head()
            load_selected_weights(self._selected, self.run_dir / "checkpoints" / "best.pt")
        return self._selected

    def score(self, split: str) -> pd.DataFrame:
        data = self.split_data(split)
        out = score_loader(self.selected_head(), self.loader_of(data, train=False), self.device, self.cfg["train"])
        return scores_frame(out["sample_id"], out["score"])

    def token_shapes(self) -> dict:
        return dict(self.meta()["token_shapes"])

    def describe(self) -> dict:
        out = super().describe()
        meta = self.meta()
        lambda_text = self.cfg["loss"].get("lambda_text", 0.0)
        out["text_term"] = {"prompt": meta["text"]["prompt"], "clip_available": meta["text"]["available"],
                            "lambda_text": lambda_text, "active": bool(meta["text"]["available"] and lambda_text > 0)}
        out["feature_source"] = dict(self.feature_source)
        out["backbones"] = {k: self.cfg["backbones"].get(k) for k in ("source", "video", "audio", "image", "clip")}
        if getattr(self, "head_description", None):
            out["head"] = self.head_description
        return out

    # ------------------------------------------------------------------------------ scoring new welds
    NEUTRALISATIONS = ("train_mean", "zeros")

    def neutral_tokens(self, how: str = "train_mean") -> dict:
        """Per-token stand-ins of the process branches for ``explain_inputs``: ``{"video_tokens", "audio_tokens"}``.

        ``train_mean``: the mean raw backbone tokens (per position) over the normal TRAIN runs the head
        was fitted on (the feature cache when on, else the backbones); ``zeros``: zero tokens.
        """
        if how not in self.NEUTRALISATIONS:
            raise ValueError(f"neutralisation must be one of {self.NEUTRALISATIONS}, got {how!r}")
        if how == "zeros":
            return {}
        from weldfilm.training.progress import progress

        train = self.split_data("train")
        keep = normal_only_indices(train.labels, train.sample_ids)
        sums, count = {}, 0
        for features in progress(self.loader_of(train, train=False, indices=keep),
                                 "Causal-FiLM TRAIN mean process tokens", unit="batch"):
            for key in ("video_tokens", "audio_tokens"):
                tokens = torch.as_tensor(features[key]).float()
                sums[key] = sums.get(key, 0) + tokens.sum(dim=0)
            count += len(features["sample_id"])
        return {key: value / max(1, count) for key, value in sums.items()}

    def explain_inputs(self, dataset, neutral: str = "train_mean", saliency: bool = False) -> list[dict]:
        """Score the runs of ``dataset`` (a ``WeldingDataset`` of new welds) and explain each score.

        Per run: ``score`` (the head's score, as ``score``), ``views`` (each photo's view score = the
        anomaly score with that view alone as Z_res; with max view pooling ``max_share`` = the share of
        Z_res dimensions whose max comes from that view; padded views are marked and never pooled unless
        ``view_padding: include``), ``modalities`` (the score with one process branch neutralised and
        the influence = score - that score): video / audio tokens replaced by ``neutral_tokens(neutral)``,
        the sensor by identity FiLM (gamma 1, beta 0, what the ``no_sensor`` / ``no_film`` ablations
        apply); a branch the model lacks (``process_branch`` ablations, ``use_sensor: false``) is None.
        ``saliency``: per view ``(side, side)`` maps of |d score / d DINOv3 patch tokens| (L2 over
        channels, summed over the two result layers; prefix tokens dropped). No weight changes.
        """
        from weldfilm.methods.causal_film.encoders import view_mask
        from weldfilm.methods.causal_film.film import identity_film_parameters
        from weldfilm.methods.causal_film.losses import compute_anomaly_score
        from weldfilm.training.progress import progress

        head = self.selected_head().eval()
        model = head.model
        stand_ins = self.neutral_tokens(neutral)
        prefix = int(self.meta()["dims"].get("image_prefix_tokens", 1))
        top_k = model.cfg["top_k_ratio"]
        include_padded = model.cfg["view_padding"] == "include"
        results = []
        for features in progress(self.loader_of(dataset, train=False), "Causal-FiLM scoring new welds", unit="batch"):
            features = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in features.items()}
            ids = list(features["sample_id"])
            with torch.no_grad():
                scores = model.anomaly_scores(features)
                gamma, beta = model.film_parameters(features, len(ids))
                z_pred = model.decoder(model.process_feature(features, gamma, beta))
                images = model._tokens(features, "image_tokens")
                per_view = model.result_encoder(images.flatten(0, 1)).unflatten(0, images.shape[:2])  # (B, N, d)
                mask = view_mask(features["num_images"], images.shape[1], ids, include_padded=include_padded)
                view_scores = torch.stack([compute_anomaly_score(per_view[:, v], z_pred, top_k)
                                           for v in range(images.shape[1])], dim=1)
                winners = per_view.masked_fill(~mask.unsqueeze(-1), float("-inf")).argmax(dim=1)  # (B, d)
                modal = {}
                for name, key, present in (("video", "video_tokens", model.uses_video),
                                           ("audio", "audio_tokens", model.uses_audio)):
                    if present:
                        raw = torch.as_tensor(features[key])
                        fill = stand_ins.get(key)
                        fill = torch.zeros_like(raw) if fill is None else fill.to(raw).expand_as(raw)
                        modal[name] = model.anomaly_scores({**features, key: fill})
                if model.modulator is not None and model.cfg["use_film"]:
                    identity = identity_film_parameters(len(ids), model.d_model, z_pred)
                    z_plain = model.decoder(model.process_feature(features, *identity))
                    modal["sensor"] = compute_anomaly_score(model.result_feature(features), z_plain, top_k)
            maps = self._saliency(model, features, prefix) if saliency else None
            for i, sid in enumerate(ids):
                n_real = int(features["num_images"][i])
                views = []
                for v in range(images.shape[1]):
                    views.append({"index": v, "padded": v >= n_real, "pooled": bool(mask[i, v]),
                                  "score": float(view_scores[i, v]),
                                  "max_share": (float((winners[i] == v).float().mean())
                                                if model.cfg["view_pooling"] == "max" else None)})
                full = float(scores[i])
                influence = {}
                for name in ("video", "audio", "sensor"):
                    if name in modal:
                        value = float(modal[name][i])
                        influence[name] = {"score_neutralised": value, "influence": full - value}
                    else:
                        influence[name] = None
                results.append({"sample_id": sid, "score": full, "views": views, "modalities": influence,
                                "saliency": None if maps is None else maps[i][:n_real]})
        return results

    def _saliency(self, model, features: dict, prefix: int):
        """``(B, N, side, side)`` numpy maps of |d score / d DINOv3 patch tokens| of one feature batch."""
        import numpy as np

        with torch.enable_grad():
            tokens = model._tokens(features, "image_tokens").detach().requires_grad_(True)
            score = model.anomaly_scores({**features, "image_tokens": tokens}).sum()
            (grad,) = torch.autograd.grad(score, tokens)
        magnitude = grad.norm(dim=-1).sum(dim=2)[..., prefix:]  # (B, N, patches)
        side = int(round(magnitude.shape[-1] ** 0.5))
        if side * side != magnitude.shape[-1]:
            side_map = magnitude  # not a square grid: keep the token row
            return side_map.unsqueeze(-2).cpu().numpy().astype(np.float32)
        return magnitude.unflatten(-1, (side, side)).cpu().numpy().astype(np.float32)
