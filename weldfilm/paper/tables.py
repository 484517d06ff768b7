"""The paper's tables, each as CSV (numbers) + Markdown + LaTeX (booktabs) + provenance JSON.

Metrics are read from each run's ``eval/test/metrics.json``; fractions in the CSV, percentages in
Markdown/LaTeX. Mean ± sample std (ddof=1) over seeds. The I-AUROC 95 % CI is the mean of the
per-seed bootstrap CIs that ``metrics.json`` carries (not a pooled bootstrap). Differences between
two models (each ablation vs the full model, each baseline vs Causal-FiLM) come from the runs'
``eval/test/scores.csv``: a paired bootstrap over the TEST runs, combined over seeds
(``weldfilm.metrics.paired``); a ``*`` marks a Δ whose 95 % CI excludes 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from weldfilm.config import PROTOCOLS
from weldfilm.data.layout import CLASS_NAMES
from weldfilm.errors import CheckpointError
from weldfilm.io import provenance, write_json, write_text
from weldfilm.metrics.paired import PairedDelta, paired_auroc_delta
from weldfilm.paper import PUBLISHED_CAUSAL_FILM, TABLE_NAMES, method_label
from weldfilm.paper.deviations import deviations_table, footnote
from weldfilm.paper.formatting import (NA, SeedStats, Table, format_value, pct, pct_mean_std, signed_points,
                                       to_latex, to_markdown)
from weldfilm.paper.results import (ResultsReader, RunKey, ablation_runs, add_common_arguments, as_float,
                                    config_from_args, main_runs)

MAIN_METRICS = (("i_auroc", "I-AUROC"), ("ap", "AP"), ("f1_max", "F1-max"))
PIXEL_PROXY_NOTE = ("Pixel proxies (P-AUROC = M3DM's pixel ROCAUC, P-AUPRO at the first FPR limit): PROXIES, the data "
                    "has no pixel masks: a defective run's whole image is its one region, a good run's mask is "
                    "empty. P-AUROC only for methods with anomaly maps (M3DM, Dinomaly); P-AUPRO of methods without "
                    "maps uses the score-filled placeholder maps of the authors' code.")
DEFECT_CLASSES = [name for code, name in sorted(CLASS_NAMES.items()) if code != 0]
PROTOCOL_LABELS = {"fair": "fair", "paper_faithful": "paper-faithful"}
DESCRIBE_ORDER = ("modalities", "input_resolutions", "input_resolution", "augmentation", "training_split",
                  "selection_split", "precision")
DESCRIBE_IDENTITY = {"method", "protocol", "ablation"}  # already the row's identity
FAIRNESS_CELL_LIMIT = 40  # longer fairness-table values become numbered notes
FAIRNESS_SPLIT_KEYS = ("input_resolutions", "input_resolution")  # a dict value: one row per entry


def _metric_stats(metrics: list[dict], key: str) -> SeedStats:
    return SeedStats.of([as_float(m.get(key)) for m in metrics])


def _ci_stats(metrics: list[dict]) -> tuple[SeedStats, SeedStats]:
    """Lower and upper ends of the runs' I-AUROC bootstrap CIs, over seeds."""
    ends = [m.get("i_auroc_ci95") or [None, None] for m in metrics]
    return SeedStats.of([as_float(lo) for lo, _ in ends]), SeedStats.of([as_float(hi) for _, hi in ends])


def _ci_text(lo: SeedStats, hi: SeedStats) -> str:
    return NA if lo.n_valid == 0 else f"[{pct(lo.mean)}, {pct(hi.mean)}]"


def _paired_delta(cfg: dict, scores: dict, keys: list[RunKey], reference_keys: list[RunKey]) -> PairedDelta:
    """Δ TEST I-AUROC of the runs ``keys`` over ``reference_keys`` (paired seed by seed, same order) from
    their scores.csv: one stratified paired bootstrap over the TEST runs, Δ averaged over seeds."""
    frames = [scores[k].drop_duplicates("sample_id").set_index("sample_id") for k in keys + reference_keys]
    order = sorted(frames[0].index)
    for key, frame in zip(keys + reference_keys, frames):
        if sorted(frame.index) != order:
            raise CheckpointError(f"scores of {key.describe()} cover other TEST runs than those of "
                                  f"{(keys + reference_keys)[0].describe()}; re-run `weldfilm evaluate` for both "
                                  "(the paired Δ needs the same runs)")
    matrix = np.stack([frame.loc[order, "score"].to_numpy(float) for frame in frames])
    labels = frames[0].loc[order, "label"].to_numpy()
    ev = cfg["evaluation"]
    try:
        return paired_auroc_delta(labels, matrix[:len(keys)], matrix[len(keys):], resamples=int(ev["bootstrap"]),
                                  seed=int(ev.get("bootstrap_seed", 0)))
    except ValueError as exc:
        raise CheckpointError(f"paired Δ of {keys[0].describe()} vs {reference_keys[0].describe()}: {exc}") from exc


def _delta_text(delta: PairedDelta) -> str:
    """'-7.3* [-11.0, -3.9]' (percentage points; * = the CI excludes 0)."""
    mark = "*" if delta.excludes_zero else ""
    return f"{signed_points(delta.delta)}{mark} [{signed_points(delta.ci_lo)}, {signed_points(delta.ci_hi)}]"


def _delta_values(prefix: str, delta: PairedDelta | None) -> dict:
    if delta is None:
        return {f"{prefix}": np.nan, f"{prefix}_ci_lo": np.nan, f"{prefix}_ci_hi": np.nan,
                f"{prefix}_excludes_zero": False}
    return {f"{prefix}": delta.delta, f"{prefix}_ci_lo": delta.ci_lo, f"{prefix}_ci_hi": delta.ci_hi,
            f"{prefix}_excludes_zero": delta.excludes_zero}


def _delta_note(table: Table, cfg: dict, reference: str) -> None:
    table.note(f"Δ [95 % CI] vs {reference}: paired bootstrap over the TEST runs ({cfg['evaluation']['bootstrap']} "
               "resamples, good and defective runs resampled apart, the same resample for both models and every "
               "seed, seed k paired with seed k; Δ = mean over seeds of the I-AUROC difference, percentage points). "
               "* = the CI excludes 0: the difference is larger than the TEST sample explains.")


def _note_nan(table: Table, stats: SeedStats, what: str) -> None:
    if stats.n_valid == 0:
        table.note(f"{what}: n/a (undefined in every seed, e.g. a class absent from TEST).")
    elif stats.partial:
        table.note(f"{what}: mean over {stats.n_valid} of {stats.n_seeds} seeds (undefined in the others).")


def main_table(cfg: dict, reader: ResultsReader) -> Table:
    """Table 1: I-AUROC, AP, F1-max and the pixel proxies on TEST per method, fair and paper-faithful, and the
    published value, and each baseline's paired Δ I-AUROC vs Causal-FiLM."""
    runs = {k: reader.metrics(k) for k in main_runs(cfg)}
    reference = "causal_film" if "causal_film" in cfg["methods"] else None
    scores = {k: reader.scores(k) for k in main_runs(cfg)} if reference else {}
    reader.raise_missing("the main comparison table")
    values, display = [], []
    table = Table("main", "Main comparison on TEST (mean ± std over seeds, in %; I-AUROC 95 % CI = mean of "
                  "per-seed bootstrap CIs). The last column is the paper's published real-data number, "
                  "a reference only.", pd.DataFrame(), pd.DataFrame())
    for method in cfg["methods"]:
        num, shown = {"method": method}, {"Method": method_label(method)}
        for protocol in PROTOCOLS:
            metrics = [runs[RunKey(method, int(s), protocol)] for s in cfg["seeds"]]
            label = PROTOCOL_LABELS[protocol]
            for key, name in MAIN_METRICS:
                stats = _metric_stats(metrics, key)
                num.update({f"{protocol}_{key}_mean": stats.mean, f"{protocol}_{key}_std": stats.std})
                shown[f"{name} ({label})"] = pct_mean_std(stats)
                _note_nan(table, stats, f"{method_label(method)} {name} ({label})")
                if key == "i_auroc":
                    lo, hi = _ci_stats(metrics)
                    num.update({f"{protocol}_i_auroc_ci_lo": lo.mean, f"{protocol}_i_auroc_ci_hi": hi.mean})
                    shown[f"I-AUROC 95% CI ({label})"] = _ci_text(lo, hi)
                    _note_nan(table, lo, f"{method_label(method)} I-AUROC CI ({label})")
            limit = str(cfg["evaluation"]["aupro_limits"][0])
            p_auroc = _metric_stats(metrics, "p_auroc_proxy")
            p_aupro = SeedStats.of([as_float((m.get("p_aupro_proxy") or {}).get(limit)) for m in metrics])
            num.update({f"{protocol}_p_auroc_proxy_mean": p_auroc.mean, f"{protocol}_p_auroc_proxy_std": p_auroc.std,
                        f"{protocol}_p_aupro_proxy_{limit}_mean": p_aupro.mean,
                        f"{protocol}_p_aupro_proxy_{limit}_std": p_aupro.std})
            shown[f"Pixel proxies P-AUROC / P-AUPRO@{limit} ({label})"] = (f"{pct_mean_std(p_auroc)} / "
                                                                          f"{pct_mean_std(p_aupro)}")
            if reference:
                keys = [RunKey(method, int(s), protocol) for s in cfg["seeds"]]
                ref_keys = [RunKey(reference, int(s), protocol) for s in cfg["seeds"]]
                delta = None if method == reference else _paired_delta(cfg, scores, keys, ref_keys)
                num.update(_delta_values(f"{protocol}_delta_vs_causal_film", delta))
                shown[f"Δ I-AUROC vs Causal-FiLM [95% CI] ({label})"] = "—" if delta is None else _delta_text(delta)
            num[f"{protocol}_n_seeds"] = len(metrics)
        published = PUBLISHED_CAUSAL_FILM if method == "causal_film" else {}
        for key, _ in MAIN_METRICS:
            num[f"published_{key}"] = published.get(key, float("nan"))
        shown["Published (real Weld-4M)"] = " / ".join(pct(published[k]) for k, _ in MAIN_METRICS) if published else NA
        values.append(num)
        display.append(shown)
    if any(m != "causal_film" for m in cfg["methods"]):
        table.note("Published column: I-AUROC / AP / F1-max of Causal-FiLM on the real Weld-4M TEST split, from the "
                   "paper; baselines n/a (not taken over).")
    table.note(PIXEL_PROXY_NOTE)
    if reference and len(cfg["methods"]) > 1:
        _delta_note(table, cfg, "Causal-FiLM (same protocol)")
    if len(cfg["seeds"]) < 2:
        table.note("Single seed: no standard deviation.")
    table.values, table.display = pd.DataFrame(values), pd.DataFrame(display)
    return table


def per_defect_table(cfg: dict, reader: ResultsReader) -> Table:
    """Table 2: I-AUROC of good vs each defect class on TEST, per protocol and method (mean ± std over
    seeds), beside the run's overall I-AUROC with its bootstrap CI."""
    runs = {k: reader.metrics(k) for k in main_runs(cfg)}
    reader.raise_missing("the per-defect table")
    table = Table("per_defect", "Per-defect-type I-AUROC on TEST (good vs each class; mean ± std over seeds, in %; "
                  "'all' = every class, with the mean of the per-seed bootstrap 95 % CIs).",
                  pd.DataFrame(), pd.DataFrame())
    values, display = [], []
    for protocol in PROTOCOLS:
        for method in cfg["methods"]:
            metrics = [runs[RunKey(method, int(s), protocol)] for s in cfg["seeds"]]
            per_seed = [m.get("per_defect_auroc") or {} for m in metrics]
            overall, (lo, hi) = _metric_stats(metrics, "i_auroc"), _ci_stats(metrics)
            num = {"protocol": protocol, "method": method, "all": overall.mean, "all_std": overall.std,
                   "all_ci_lo": lo.mean, "all_ci_hi": hi.mean}
            shown = {"Protocol": PROTOCOL_LABELS[protocol], "Method": method_label(method),
                     "all": f"{pct_mean_std(overall)} {_ci_text(lo, hi)}"}
            for name in DEFECT_CLASSES:
                stats = SeedStats.of([as_float(d.get(name)) for d in per_seed])
                num[name], num[f"{name}_std"] = stats.mean, stats.std
                shown[name.replace("_", " ")] = pct_mean_std(stats)
                _note_nan(table, stats, f"{method_label(method)} ({PROTOCOL_LABELS[protocol]}) {name}")
            values.append(num)
            display.append(shown)
    table.values, table.display = pd.DataFrame(values), pd.DataFrame(display)
    return table


def ablation_table(cfg: dict, reader: ResultsReader) -> Table:
    """Table 3: I-AUROC of each ablation and its difference to the full model (fair Causal-FiLM)."""
    full_keys = main_runs(cfg, protocols=("fair",), methods=("causal_film",))
    rows = [("full", "(none: fair Causal-FiLM)", full_keys, [reader.metrics(k) for k in full_keys])]
    for name, overrides in cfg["ablations"].items():
        keys = [k for k in ablation_runs(cfg) if k.ablation == name]
        rows.append((name, format_value(overrides or {}), keys, [reader.metrics(k) for k in keys]))
    scores = {k: reader.scores(k) for _, _, keys, _ in rows for k in keys}
    reader.raise_missing("the ablation table")
    table = Table("ablations", "Ablations of Causal-FiLM (fair protocol, TEST I-AUROC mean ± std over seeds in %, "
                  "95 % CI = mean of per-seed bootstrap CIs; Δ vs full = paired-bootstrap I-AUROC difference to the "
                  "full model in percentage points with its 95 % CI, * = CI excludes 0).", pd.DataFrame(), pd.DataFrame())
    full = _metric_stats(rows[0][3], "i_auroc")
    values, display = [], []
    for name, overrides, keys, metrics in rows:
        stats, (lo, hi) = _metric_stats(metrics, "i_auroc"), _ci_stats(metrics)
        paired = None if name == "full" else _paired_delta(cfg, scores, keys, full_keys)
        values.append({"ablation": name, "overrides": overrides, "i_auroc_mean": stats.mean,
                       "i_auroc_std": stats.std, "i_auroc_ci_lo": lo.mean, "i_auroc_ci_hi": hi.mean,
                       "delta_vs_full": stats.mean - full.mean, **_delta_values("paired_delta", paired),
                       "n_seeds": stats.n_seeds})
        display.append({"Ablation": name, "Overrides": overrides, "I-AUROC": pct_mean_std(stats),
                        "I-AUROC 95% CI": _ci_text(lo, hi),
                        "Δ vs full [95% CI]": "0.0" if paired is None else _delta_text(paired)})
        _note_nan(table, stats, f"ablation {name} I-AUROC")
    if not cfg["ablations"]:
        table.note("No ablations configured (config key `ablations` is empty).")
    else:
        _delta_note(table, cfg, "the full model")
    table.values, table.display = pd.DataFrame(values), pd.DataFrame(display)
    return table


def _metadata_by_run(cfg: dict, reader: ResultsReader, what: str) -> dict[RunKey, dict]:
    out = {k: reader.metadata(k) for k in main_runs(cfg)}
    reader.raise_missing(what)
    return out


def _first_seed_value(table: Table, cfg: dict, meta: dict, protocol: str, method: str, field: str):
    """The field of the first seed's metadata; a note when other seeds differ."""
    values = [meta[RunKey(method, int(s), protocol)].get(field) for s in cfg["seeds"]]
    if any(v != values[0] for v in values[1:]):
        table.note(f"{method_label(method)} ({PROTOCOL_LABELS[protocol]}): `{field}` differs between seeds; "
                   f"seed {cfg['seeds'][0]} shown.")
    return values[0]


def protocol_table(cfg: dict, reader: ResultsReader) -> Table:
    """Table 4 (fairness audit): one row per setting a run records in its metadata `describe` (modalities,
    input resolution, augmentation, splits, ... -- whatever the methods record, in DESCRIBE_ORDER first),
    one column per method x protocol; a value longer than FAIRNESS_CELL_LIMIT characters is a numbered
    note below the table. CSV: one row per setting, columns ``<method>/<protocol>`` with the full text."""
    meta = _metadata_by_run(cfg, reader, "the protocol/fairness table")
    table = Table("protocol", "Fairness audit: what each method sees and how it is selected, per method and "
                  "protocol, as recorded by each run (metadata `describe`); [n] = numbered note below.",
                  pd.DataFrame(), pd.DataFrame())
    columns = [(method, protocol) for method in cfg["methods"] for protocol in PROTOCOLS]
    records = {}
    for method, protocol in columns:
        describe = dict(_first_seed_value(table, cfg, meta, protocol, method, "describe") or {})
        if "selection_split" not in describe:
            describe["selection_split"] = meta[RunKey(method, int(cfg["seeds"][0]), protocol)].get("selection_split")
        for key in FAIRNESS_SPLIT_KEYS:  # one row per modality: "input resolution: video", ...
            if isinstance(describe.get(key), dict):
                describe.update({f"{key}: {sub}": value for sub, value in describe.pop(key).items()})
        records[(method, protocol)] = describe
    recorded = {k for d in records.values() for k in d} - DESCRIBE_IDENTITY
    keys = []
    for key in DESCRIBE_ORDER:
        keys += [key] if key in recorded else sorted(k for k in recorded if k.startswith(f"{key}: "))
    keys += sorted(recorded - set(keys))
    values, display = [], []
    for key in keys:
        row, shown = {"setting": key}, {"Setting": key.replace("_", " ")}
        for method, protocol in columns:
            describe = records[(method, protocol)]
            text = format_value(describe[key]) if key in describe else NA
            row[f"{method}/{protocol}"] = text
            shown[f"{method_label(method)} ({PROTOCOL_LABELS[protocol]})"] = (
                text if len(text) <= FAIRNESS_CELL_LIMIT else footnote(table, text))
        values.append(row)
        display.append(shown)
    if any(NA in row.values() for row in values):
        table.note("n/a: the method does not record this setting.")
    table.values, table.display = pd.DataFrame(values), pd.DataFrame(display)
    return table


def _flatten(shapes: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for name, value in shapes.items():
        if isinstance(value, dict):
            out += _flatten(value, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", value))
    return out


def token_shape_table(cfg: dict, reader: ResultsReader) -> Table:
    """Table 5: backbone token shapes recorded at run time (metadata `token_shapes`, fair protocol)."""
    meta = _metadata_by_run(cfg, reader, "the token-shape table")
    table = Table("token_shapes", f"Backbone token shapes recorded at run time (fair protocol, seed "
                  f"{cfg['seeds'][0]}).", pd.DataFrame(), pd.DataFrame())
    values, display = [], []
    for method in cfg["methods"]:
        shapes = _first_seed_value(table, cfg, meta, "fair", method, "token_shapes")
        faithful = [meta[RunKey(method, int(s), "paper_faithful")].get("token_shapes") for s in cfg["seeds"]]
        if any(f != shapes for f in faithful):
            table.note(f"{method_label(method)}: paper-faithful runs record other token shapes than fair runs.")
        if shapes is None:
            table.note(f"{method_label(method)}: metadata has no `token_shapes` (n/a).")
        entries = _flatten(shapes) if shapes else [("(none recorded)", None)]
        if shapes == {}:
            table.note(f"{method_label(method)}: `token_shapes` is empty (no frozen backbone output recorded).")
        for name, shape in entries:
            text = NA if shape is None else format_value(shape)
            values.append({"method": method, "tokens": name, "shape": text})
            display.append({"Method": method_label(method), "Tokens": name, "Shape": text})
    table.values, table.display = pd.DataFrame(values), pd.DataFrame(display)
    return table


BUILDERS = {"main": main_table, "per_defect": per_defect_table, "ablations": ablation_table,
            "protocol": protocol_table, "token_shapes": token_shape_table, "deviations": deviations_table}
assert tuple(BUILDERS) == TABLE_NAMES


def write_table(table: Table, out_dir: Path, prov: dict) -> list[Path]:
    """Write <name>.csv, .md, .tex and .provenance.json; return the paths."""
    out_dir = Path(out_dir)
    paths = [out_dir / f"{table.name}{s}" for s in (".csv", ".md", ".tex", ".provenance.json")]
    write_text(paths[0], table.values.to_csv(index=False))
    write_text(paths[1], to_markdown(table))
    write_text(paths[2], to_latex(table))
    write_json(paths[3], {**prov, "table": table.name, "notes": table.notes})
    return paths


def build_tables(cfg: dict, results_dir, out_dir) -> list[Path]:
    """Build every table of TABLE_NAMES from the results below ``results_dir`` into ``out_dir``."""
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    base = provenance(cfg, seeds=list(cfg["seeds"]), results_dir=str(results_dir))
    written = []
    for builder in BUILDERS.values():
        reader = ResultsReader(results_dir)
        table = builder(cfg, reader)
        written += write_table(table, out_dir, {**base, "files_read": sorted(reader.files_read)})
    return written


def add_cli_arguments(parser) -> None:
    add_common_arguments(parser)


def cli(args) -> int:
    cfg, results = config_from_args(args)
    out = Path(args.out) if args.out else results / "paper" / "tables"
    for path in build_tables(cfg, results, out):
        print(path)
    return 0
