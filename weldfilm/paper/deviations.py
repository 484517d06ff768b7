"""Where a run differs from the authors' code: the registry of the authors' settings and the table built from it.

``AUTHORS`` is the one place that records what the authors' code effectively did (spec sections 1-10 of
``shared/spec/paper-draft.md``), one line per setting: the methods it applies to, where a run records its
own value in ``metadata.json`` (``config.<section>.<key>`` = the run config; ``selection_split``,
``describe.<field>``, ``fit.<field>`` = what the method itself recorded), the authors' effective value, the
spec section, the kind of difference and a note on what the authors' code did. Adding a setting is one
``S(...)`` line.

``deviations_table`` reads every run's ``metadata.json`` and lists each (setting, method) where a run's
recorded value is not the authors' one: the authors' value, the value of each protocol's runs, the
ablations that change it, why (the kind) and which part of the config set it. Nothing here restates what a
run did: change the code's or the config's value and the table changes with the next run.

Kinds (``KINDS``): ``flaw`` -- a flaw of the authors' code, corrected under ``fair`` and reproduced under
``paper_faithful``; ``intended`` -- the authors' config named it, their script ignored it: ``fair`` trains as
configured, ``paper_faithful`` as the script ran; ``effective`` -- the authors' config intended another value
their code never used: the effective value is the default of both protocols and the intended one a named
key; ``method`` -- the method as the authors built it (ablations change it); ``scale`` -- sizes and schedule
lengths, smaller in the default profile (tiny backbones, CPU minutes), the authors' under ``profile: paper``;
``adapted`` -- the authors' setting cannot carry over (it is shown as a difference in every run).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Mapping

import pandas as pd

from weldfilm.config import PROTOCOLS, profile_chain
from weldfilm.errors import ConfigError
from weldfilm.paper import method_label
from weldfilm.paper.formatting import Table, format_value
from weldfilm.paper.results import ablation_runs, main_runs

CF, LF, M3, DI = "causal_film", "late_fusion", "m3dm", "dinomaly"
ALL = (CF, LF, M3, DI)
FLAW, INTENDED, EFFECTIVE, METHOD, SCALE, ADAPTED = "flaw", "intended", "effective", "method", "scale", "adapted"
KINDS = {
    FLAW: "a flaw of the authors' code: corrected under `fair`, reproduced under `paper_faithful`",
    INTENDED: "the authors' config names it but their script ignores it: `fair` trains as configured, "
              "`paper_faithful` as the script ran",
    EFFECTIVE: "the authors' config intended another value that never reached their code: the effective value "
               "is the default, the intended one a named key",
    METHOD: "the method as the authors built it; ablations and config edits change it",
    SCALE: "size or schedule length: the default profile shrinks it (tiny backbones, CPU minutes), "
           "`profile: paper` sets the authors' value",
    ADAPTED: "the authors' setting has no counterpart in a comparable run (e.g. image-level scores where every "
             "method is compared per run): every run records its choice, in both protocols",
}
NOT_RECORDED = "not recorded"


@dataclass(frozen=True)
class AuthorsSetting:
    """One effective setting of the authors' code (see the module docstring)."""

    methods: tuple[str, ...]
    path: str              # where metadata.json records the run's own value
    authors: Any           # the authors' effective value
    spec: str              # section of shared/spec/paper-draft.md
    kind: str              # a key of KINDS
    note: str              # what the authors' code did ("" when the value says it all)
    key: str | None = None  # the config key that sets it (default: the path without 'config.')

    @property
    def setting(self) -> str:
        return self.path[len("config."):] if self.path.startswith("config.") else self.path

    @property
    def config_key(self) -> str | None:
        if self.key:
            return self.key
        return self.setting if self.path.startswith("config.") else None


def S(methods, path: str, authors, spec: str, kind: str, note: str, key: str | None = None) -> AuthorsSetting:
    """One registry line; ``methods`` is a method name or a tuple of them."""
    methods = (methods,) if isinstance(methods, str) else tuple(methods)
    return AuthorsSetting(methods, path, authors, spec, kind, note, key)


AUTHORS: tuple[AuthorsSetting, ...] = (
    # ---- Causal-FiLM: flaws and config-vs-code mismatches
    S(CF, "describe.augmentation", True, "8.6, 10.5.3", FLAW, "use_augmentations=True: section-8.6 augmentation of the TRAIN runs, while no baseline augments (not aligned across methods)", key="train.use_augmentations"),
    S(CF, "config.causal_film.view_padding", "include", "1, 4.2", FLAW, "runs with fewer than 5 photos are padded with zero images, and the max over angles includes them"),
    S(CF, "config.train.warmup_epochs", 0, "8.4", INTENDED, "the config's warmup keys (lr_scheduler, warmup_epochs, warmup_start_lr) are never read: plain cosine from epoch 0"),
    S(CF, "config.train.use_ema", False, "8.4, 10.6", INTENDED, "the config's use_ema=True / ema_decay are never read: no EMA"),
    S(CF, "config.preprocess.frame_size", 64, "1", EFFECTIVE, "WeldingDataset's default 64 px; the config's VIDEO_FRAME_SIZE=224 is never passed"),
    S(CF, "config.preprocess.audio_mel_bins", 64, "1", EFFECTIVE, "WeldingDataset's default 64 mel bins; the config's AUDIO_N_MELS=128 is never passed"),
    S(CF, "config.causal_film.decoder_num_layers", 1, "5", EFFECTIVE, "AntiGenDecoder(d_model=d) has one hidden block; the config's decoder_num_layers=2 is unused"),
    S(CF, "config.causal_film.decoder_dropout", 0.1, "5", EFFECTIVE, "AntiGenDecoder's hard-coded Dropout(0.1); the config's decoder_dropout=0.2 is unused"),
    S(CF, "config.causal_film.result_drop_special_tokens", False, "2.1", EFFECTIVE, "the result encoder pools every DINOv3 token, CLS and registers included"),
    S(CF, "selection_split", "val", "8.7, 10.5.1", METHOD, "best_model.pth by VAL AUROC", key="train.selection_split"),
    S(ALL, "config.evaluation.threshold_split", "same", "9.3, 10.3.1", FLAW, "the Youden threshold (and F1-max) is picked on the split it is reported on, TEST"),
    # ---- Causal-FiLM: the method as built (ablations vary these)
    S(CF, "config.causal_film.sensor_encoder", "mamba", "3", METHOD, "two Mamba blocks encode the sensor table"),
    S(CF, "config.causal_film.use_film", True, "3", METHOD, "the sensor's (gamma, beta) modulate every video and audio token"),
    S(CF, "config.causal_film.use_sensor", True, "3", METHOD, ""),
    S(CF, "config.causal_film.process_branch", "both", "4.1", METHOD, "video tokens attend to audio tokens"),
    S(CF, "config.causal_film.result_pooling", "gem", "4.2", METHOD, "layer 21: mean + GeM (p=6), layer 32: mean"),
    S(CF, "config.causal_film.view_pooling", "max", "4.2", METHOD, "the result codes of the views are max-pooled"),
    S(CF, "config.causal_film.top_k_ratio", 0.5, "6, 7", METHOD,
      "k = d / 2: anomaly score = top-k mean of |Z_res - Z_pred| (7), Smooth-L1 term mined on the top half of the features (6)"),
    S(CF, "config.loss.lambda_l1", 1.0, "6", METHOD, ""),
    S(CF, "config.loss.lambda_gram", 1.0, "6", METHOD, ""),
    S(CF, "config.loss.lambda_text", 0.01, "6", METHOD, ""),
    S(CF, "config.loss.text_prompt", "a normal weld", "6", METHOD, ""),
    S(CF, "config.train.weight_decay", 1.0e-2, "10.6", METHOD, "AdamW weight decay 1e-2 (the authors' logbook)"),
    # ---- Causal-FiLM: sizes
    S(CF, "config.preprocess.video_frames", 32, "1", SCALE, ""),
    S(CF, "config.preprocess.image_size", 224, "1", SCALE, ""),
    S(CF, "config.preprocess.num_angles", 5, "1", SCALE, ""),
    S(CF, "config.preprocess.audio_frames", 256, "1", SCALE, ""),
    S(CF, "config.preprocess.sensor_length", 256, "1", SCALE, ""),
    S(CF, "config.causal_film.d_model", 512, "2", SCALE, ""),
    S(CF, "config.causal_film.projector_hidden", 512, "2.2, 4.2", SCALE, ""),
    S(CF, "config.causal_film.sensor_hidden_dim", 128, "3", SCALE, ""),
    S(CF, "config.causal_film.result_layers", [20, 31], "4.2", SCALE, "DINOv3 hidden states 21 and 32 (indices 20, 31)"),
    S(CF, "config.train.lr", 2.0e-5, "10.6", SCALE, "AdamW lr 2e-5 (the authors' logbook)"),
    # ---- Late Fusion (10.4.1)
    S(LF, "selection_split", "test", "10.4.1, 10.5.1", FLAW, "validation during training on TEST", key="train.selection_split"),
    S(LF, "describe.augmentation", False, "10.5.3", METHOD, "WeldingDataset without augment=True", key="train.use_augmentations"),
    S(LF, "config.late_fusion.video_frames", 8, "10.4.1", EFFECTIVE, "WeldingDataset's default 8 frames (not overridden)"),
    S(LF, "config.late_fusion.frame_size", 64, "10.4.1", EFFECTIVE, "WeldingDataset's default 64 px (not overridden)"),
    S(LF, "config.late_fusion.search_weights", False, "10.4.1", METHOD, "optimize_fusion_weights exists but evaluate.py does not call it"),
    S(LF, "config.late_fusion.w_audio", 0.37, "10.4.1", METHOD, ""),
    S(LF, "config.late_fusion.w_video", 0.63, "10.4.1", METHOD, ""),
    S(LF, "config.late_fusion.audio_bottleneck", 48, "10.4.1", METHOD, ""),
    S(LF, "config.late_fusion.video_dropout", 0.5, "10.4.1", METHOD, ""),
    S(LF, "config.late_fusion.audio_pct_start", 0.1, "10.4.1", METHOD, ""),
    S(LF, "config.late_fusion.video_patience", 10, "10.4.1", METHOD, ""),
    S(LF, "config.late_fusion.video_window_s", 2.0, "10.4.1", METHOD, "video score = max of the 2 s moving average of the frame scores (their mean for clips shorter than 2 s)"),
    S(LF, "config.late_fusion.audio_sr", 192000, "10.4.1", SCALE, ""),
    S(LF, "config.late_fusion.n_fft", 16384, "10.4.1", SCALE, ""),
    S(LF, "config.late_fusion.hop_length", 8192, "10.4.1", SCALE, ""),
    S(LF, "config.late_fusion.audio_frames", 1024, "10.4.1", SCALE, ""),
    S(LF, "config.late_fusion.video_feature_dim", 2304, "10.4.1", SCALE, "frozen Linear(3 -> 2304), the SlowFast width"),
    S(LF, "config.late_fusion.audio_epochs", 50, "10.4.1", SCALE, ""),
    # ---- M3DM (10.4.2)
    S(M3, "selection_split", None, "10.4.2, 10.5.1", METHOD, "no model selection (memory banks)", key="train.selection_split"),
    S(M3, "describe.augmentation", False, "10.5.3", METHOD, "deterministic resize/normalise", key="train.use_augmentations"),
    S(M3, "config.m3dm.fusion_fit_scores", "in_sample", "10.4.2", FLAW, "the SGDOneClassSVM fusers are fitted on TRAIN scores of runs whose own patches are in the banks"),
    S(M3, "config.m3dm.f_coreset", 0.1, "10.4.2", METHOD, "greedy coreset keeps 10 % of the patches"),
    S(M3, "config.m3dm.coreset_eps", 0.9, "10.4.2", METHOD, ""),
    S(M3, "config.m3dm.image_size", 224, "10.4.2", SCALE, ""),
    S(M3, "config.m3dm.cloud_size", 224, "10.4.2", SCALE, "pseudo point cloud (3, 224, 224)"),
    S(M3, "config.m3dm.point_trans_dim", 384, "10.4.2", SCALE, ""),
    S(M3, "config.m3dm.point_depth", 12, "10.4.2", SCALE, ""),
    S(M3, "config.m3dm.point_heads", 6, "10.4.2", SCALE, ""),
    S(M3, "config.m3dm.point_group_size", 128, "10.4.2", SCALE, ""),
    S(M3, "config.m3dm.point_num_groups", 1024, "10.4.2", SCALE, ""),
    S(M3, "config.m3dm.point_taps", [3, 7, 11], "10.4.2", SCALE, "blocks 3, 7, 11 concatenated (1152 channels)"),
    S(M3, "config.m3dm.point_grid", 56, "10.4.2", SCALE, "M3DM's AdaptiveAvgPool2d((56, 56)) of the point features interpolated onto the cloud"),
    S(M3, "describe.method_name", "DINO+Point_MAE / DINO+Point_MAE+Fusion", "10.4.2", ADAPTED, "train.sh builds DINO+Point_MAE, evaluate.sh loads DINO+Point_MAE+Fusion, whose fusers train.sh never writes; one name must serve both"),
    # ---- Dinomaly (10.4.3)
    S(DI, "selection_split", "test", "10.4.3, 10.5.1", FLAW, "best_model.pth by TEST AUROC", key="train.selection_split"),
    S(DI, "describe.augmentation", False, "10.5.3", METHOD, "deterministic resize/crop/normalise", key="train.use_augmentations"),
    S(DI, "config.dinomaly.bottleneck_ratio", 4.0, "10.4.3", METHOD, "bMlp(embed -> 4 embed -> embed)"),
    S(DI, "config.dinomaly.dropout", 0.2, "10.4.3", METHOD, ""),
    S(DI, "config.dinomaly.weight_decay", 1.0e-4, "10.4.3", METHOD, ""),
    S(DI, "config.dinomaly.eps", 1.0e-10, "10.4.3", METHOD, ""),
    S(DI, "config.dinomaly.amsgrad", True, "10.4.3", METHOD, ""),
    S(DI, "config.dinomaly.gradient_clip", 0.1, "10.4.3", METHOD, ""),
    S(DI, "config.dinomaly.hard_ratio", 0.9, "10.4.3", METHOD, "hard-mining p ramps up to 0.9"),
    S(DI, "config.dinomaly.easy_factor", 0.1, "10.4.3", METHOD, "gradient factor 0.1 of the easy points"),
    S(DI, "config.dinomaly.score_top_ratio", 0.0, "10.4.3", METHOD, "image score = max over the map"),
    S(DI, "config.dinomaly.blur_sigma", 4.0, "10.4.3", METHOD, "maps blurred with a Gaussian of sigma 4 (Dinomaly's code)"),
    S(DI, "config.dinomaly.blur_kernel_size", 5, "10.4.3", METHOD, "Dinomaly's get_gaussian_kernel: 5 x 5 taps"),
    S(DI, "config.dinomaly.run_aggregation", "per image", "10.4.3", ADAPTED, "every image is a sample with its own score and AUROC; a run score (mean or max over its images) is needed to compare with the other methods"),
    S(DI, "config.dinomaly.resize", 448, "10.4.3", SCALE, ""),
    S(DI, "config.dinomaly.crop_size", 392, "10.4.3", SCALE, ""),
    S(DI, "config.dinomaly.decoder_depth", 8, "10.4.3", SCALE, ""),
    S(DI, "config.dinomaly.lr", 2.0e-3, "10.4.3", SCALE, ""),
    S(DI, "config.dinomaly.warmup_iters", 100, "10.4.3", SCALE, ""),
    S(DI, "config.dinomaly.map_size", 256, "10.4.3", SCALE, ""),
)


# ------------------------------------------------------------------------------ values
def recorded_value(metadata: Mapping, path: str):
    """The value at dotted ``path`` of a run's metadata, or NOT_RECORDED."""
    node: Any = metadata
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return NOT_RECORDED
        node = node[part]
    return node


def same_value(a, b) -> bool:
    """Equal as settings: bools only equal bools, numbers by value (1e-9 relative), sequences element-wise."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return a == b


def show(value) -> str:
    return NOT_RECORDED if isinstance(value, str) and value == NOT_RECORDED else format_value(value)


@functools.lru_cache(maxsize=1)
def schema_defaults() -> dict:
    from weldfilm.config import validate

    return validate({})


def _has_dotted(node, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def set_by(metadata: Mapping, key: str | None) -> str:
    """Which part of the run's config set ``key``: the protocol, the ablation, the profile, the config or the
    schema default (from the run config recorded in the metadata)."""
    if key is None:
        return "the method's code"
    cfg, run = metadata.get("config") or {}, metadata.get("run") or {}
    if not _has_dotted(cfg, key):
        return NOT_RECORDED
    protocol, ablation = run.get("protocol"), run.get("ablation")
    if ablation and key in ((cfg.get("ablations") or {}).get(ablation) or {}):
        return f"ablations.{ablation}"
    if protocol and key in ((cfg.get("protocols") or {}).get(protocol) or {}):
        return f"protocols.{protocol}"
    value = recorded_value(cfg, key)
    if _has_dotted(schema_defaults(), key) and same_value(value, recorded_value(schema_defaults(), key)):
        return "schema default"
    profile, profiles = cfg.get("profile", "default"), cfg.get("profiles") or {}
    if profile in profiles:
        try:
            chain = profile_chain(profile, profiles)
        except ConfigError:  # a run config always held a valid chain; stay readable if not
            chain = []
        for name, block in reversed(chain):
            if _has_dotted(block, key):
                return f"profiles.{name}"
    return "config"


# ------------------------------------------------------------------------------ the table
def footnote(table: Table, text: str) -> str:
    """A numbered note of ``table`` ('[n] text', shared by identical texts); returns the mark '[n]'."""
    numbered = [n for n in table.notes if n.startswith("[")]
    for note in numbered:
        mark, _, body = note.partition(" ")
        if body == text:
            return mark
    mark = f"[{len(numbered) + 1}]"
    table.note(f"{mark} {text}")
    return mark


def _values(setting: AuthorsSetting, metas: list[Mapping]) -> list:
    return [recorded_value(m, setting.path) for m in metas]


def _cell(values: list, authors) -> tuple[str, bool]:
    """Display text of a protocol's runs (seeds) and whether any differs from the authors' value."""
    if not values:
        return "n/a", False
    differs = [not same_value(v, authors) for v in values]
    distinct = []
    for v in values:
        if not any(same_value(v, d) for d in distinct):
            distinct.append(v)
    if not any(differs):
        return "= authors", False
    text = " / ".join(show(v) for v in distinct)
    return (f"varies: {text}" if len(distinct) > 1 else text), True


def deviation_rows(runs: Mapping[tuple[str, str | None, str], list[Mapping]],
                   methods, protocols=PROTOCOLS, registry=AUTHORS) -> list[dict]:
    """One dict per (registry setting, method of ``methods`` it applies to); ``differs`` says whether some
    run (a protocol's seeds or an ablation) records another value than the authors'.

    ``runs[(method, protocol_or_None, ablation_or_None)]`` = the metadata of that run's seeds (main runs:
    ablation None; ablation runs: protocol None).
    """
    rows = []
    for setting in registry:
        for method in methods:
            if method not in setting.methods:
                continue
            row = {"setting": setting.setting, "method": method, "authors": show(setting.authors),
                   "spec": setting.spec, "kind": setting.kind, "note": setting.note, "differs": False}
            for protocol in protocols:
                metas = runs.get((method, protocol, None), [])
                row[protocol], differs = _cell(_values(setting, metas), setting.authors)
                row[f"{protocol}_differs"] = differs
                row[f"{protocol}_set_by"] = (", ".join(dict.fromkeys(set_by(m, setting.config_key) for m in metas))
                                             if differs else "")
                row["differs"] |= differs
            fair = _values(setting, runs.get((method, "fair", None), []))
            changed = []
            for (m, protocol, ablation), metas in runs.items():
                if m != method or ablation is None:
                    continue
                values = _values(setting, metas)
                if any(not same_value(v, setting.authors) for v in values) and not all(
                        any(same_value(v, f) for f in fair) for v in values):
                    changed.append(f"{ablation}: {' / '.join(show(v) for v in values[:1])}")
            row["ablations"] = "; ".join(changed)
            row["differs"] |= bool(changed)
            rows.append(row)
    return rows


def deviations_table(cfg: dict, reader) -> Table:
    """Appendix table: every (setting, method) where a run's recorded value is not the authors' one."""
    runs: dict[tuple, list] = {}
    for key in main_runs(cfg):
        runs.setdefault((key.method, key.protocol, None), []).append(reader.metadata(key))
    for key in ablation_runs(cfg):
        runs.setdefault((key.method, None, key.ablation), []).append(reader.metadata(key))
    reader.raise_missing("the deviations table")
    rows = deviation_rows(runs, cfg["methods"])
    shown_rows = [r for r in rows if r["differs"]]
    table = Table("deviations", "Where the runs differ from the authors' code (spec sections 1-10), from each run's "
                  "metadata.json: the authors' effective value, each protocol's runs ('= authors' where they "
                  "match), the ablations that change it, the kind of difference and the part of the config that "
                  "set the run's value.", pd.DataFrame(), pd.DataFrame())
    kind_order = list(KINDS)
    shown_rows.sort(key=lambda r: (kind_order.index(r["kind"]), list(cfg["methods"]).index(r["method"])))
    display = []
    for row in shown_rows:
        entry = {"Setting": row["setting"], "Method": method_label(row["method"]),
                 "Authors' code": f"{row['authors']} (§{row['spec']})"
                                  + (f" {footnote(table, row['note'])}" if row["note"] else "")}
        for protocol in PROTOCOLS:
            entry[protocol.replace("_", "-")] = row[protocol]
        entry["Ablations"] = row["ablations"] or "–"
        entry["Kind"] = row["kind"]
        entry["Set by"] = "; ".join(f"{p.replace('_', '-')}: {row[f'{p}_set_by']}" for p in PROTOCOLS
                                    if row[f"{p}_set_by"]) or "–"
        display.append(entry)
    for kind, text in KINDS.items():
        if any(r["kind"] == kind for r in shown_rows):
            table.note(f"Kind `{kind}`: {text}.")
    checked = len(rows)
    table.note(f"{checked - len(shown_rows)} of {checked} recorded (setting, method) pairs of the authors' code "
               f"match in every run and are not listed (registry: weldfilm/paper/deviations.py).")
    if not shown_rows:
        display.append({"Setting": "(none)", "Method": "–", "Authors' code": "–",
                        **{p.replace("_", "-"): "= authors" for p in PROTOCOLS}, "Ablations": "–", "Kind": "–",
                        "Set by": "–"})
    table.values = pd.DataFrame([{k: v for k, v in r.items() if k != "differs"} for r in shown_rows],
                                columns=["setting", "method", "authors", "spec", "kind", *PROTOCOLS,
                                         *(f"{p}_set_by" for p in PROTOCOLS), "ablations", "note"])
    table.display = pd.DataFrame(display)
    return table
