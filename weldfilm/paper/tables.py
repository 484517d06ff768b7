"""The paper's tables, each as CSV (numbers) + Markdown + LaTeX (booktabs) + provenance JSON.

Metrics are read from each run's ``eval/test/metrics.json``; fractions in the CSV, percentages in
Markdown/LaTeX. Mean ± sample std (ddof=1) over seeds. The I-AUROC 95 % CI is the mean of the
per-seed bootstrap CIs that ``metrics.json`` carries (not a pooled bootstrap).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from weldfilm.config import PROTOCOLS
from weldfilm.data.layout import CLASS_NAMES
from weldfilm.io import provenance, write_json, write_text
from weldfilm.paper import PUBLISHED_CAUSAL_FILM, TABLE_NAMES, method_label
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
                  "selection_split")
DESCRIBE_IDENTITY = {"method", "protocol", "ablation"}  # already the row's identity


def _metric_stats(metrics: list[dict], key: str) -> SeedStats:
    return SeedStats.of([as_float(m.get(key)) for m in metrics])


def _ci_stats(metrics: list[dict]) -> tuple[SeedStats, SeedStats]:
    """Lower and upper ends of the runs' I-AUROC bootstrap CIs, over seeds."""
    ends = [m.get("i_auroc_ci95") or [None, None] for m in metrics]
    return SeedStats.of([as_float(lo) for lo, _ in ends]), SeedStats.of([as_float(hi) for _, hi in ends])


def _ci_text(lo: SeedStats, hi: SeedStats) -> str:
    return NA if lo.n_valid == 0 else f"[{pct(lo.mean)}, {pct(hi.mean)}]"


def _note_nan(table: Table, stats: SeedStats, what: str) -> None:
    if stats.n_valid == 0:
        table.note(f"{what}: n/a (undefined in every seed, e.g. a class absent from TEST).")
    elif stats.partial:
        table.note(f"{what}: mean over {stats.n_valid} of {stats.n_seeds} seeds (undefined in the others).")


def main_table(cfg: dict, reader: ResultsReader) -> Table:
    """Table 1: I-AUROC, AP, F1-max and the pixel proxies on TEST per method, fair and paper-faithful, and the
    published value."""
    runs = {k: reader.metrics(k) for k in main_runs(cfg)}
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
    rows = [("full", "(none: fair Causal-FiLM)", [reader.metrics(k) for k in full_keys])]
    for name, overrides in cfg["ablations"].items():
        keys = [k for k in ablation_runs(cfg) if k.ablation == name]
        rows.append((name, format_value(overrides or {}), [reader.metrics(k) for k in keys]))
    reader.raise_missing("the ablation table")
    table = Table("ablations", "Ablations of Causal-FiLM (fair protocol, TEST I-AUROC mean ± std over seeds in %, "
                  "95 % CI = mean of per-seed bootstrap CIs; Δ = difference of means to the full model, percentage "
                  "points).", pd.DataFrame(), pd.DataFrame())
    full = _metric_stats(rows[0][2], "i_auroc")
    values, display = [], []
    for name, overrides, metrics in rows:
        stats, (lo, hi) = _metric_stats(metrics, "i_auroc"), _ci_stats(metrics)
        delta = stats.mean - full.mean
        values.append({"ablation": name, "overrides": overrides, "i_auroc_mean": stats.mean,
                       "i_auroc_std": stats.std, "i_auroc_ci_lo": lo.mean, "i_auroc_ci_hi": hi.mean,
                       "delta_vs_full": delta, "n_seeds": stats.n_seeds})
        display.append({"Ablation": name, "Overrides": overrides, "I-AUROC": pct_mean_std(stats),
                        "I-AUROC 95% CI": _ci_text(lo, hi),
                        "Δ vs full": "0.0" if name == "full" else signed_points(delta)})
        _note_nan(table, stats, f"ablation {name} I-AUROC")
    if not cfg["ablations"]:
        table.note("No ablations configured (config key `ablations` is empty).")
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
    """Table 4: what each method sees and how it is selected, from each run's metadata `describe`."""
    meta = _metadata_by_run(cfg, reader, "the protocol/fairness table")
    table = Table("protocol", "Fairness audit: modalities, input resolutions, augmentation and selection split per "
                  "method and protocol, as recorded by each run (metadata `describe`).", pd.DataFrame(), pd.DataFrame())
    records = []
    for protocol in PROTOCOLS:
        for method in cfg["methods"]:
            describe = dict(_first_seed_value(table, cfg, meta, protocol, method, "describe") or {})
            if "selection_split" not in describe:
                first = meta[RunKey(method, int(cfg["seeds"][0]), protocol)]
                describe["selection_split"] = first.get("selection_split")
            records.append(({"protocol": protocol, "method": method}, describe))
    keys = [k for k in DESCRIBE_ORDER if any(k in d for _, d in records)]
    keys += sorted({k for _, d in records for k in d} - set(keys) - DESCRIBE_IDENTITY)
    for key in keys:
        lacking = sorted({method_label(i["method"]) for i, d in records if key not in d})
        if lacking:
            table.note(f"`{key}` is not recorded by {', '.join(lacking)} (n/a).")
    values, display = [], []
    for ident, describe in records:
        row = {**ident}
        shown = {"Protocol": PROTOCOL_LABELS[ident["protocol"]], "Method": method_label(ident["method"])}
        for key in keys:
            text = format_value(describe[key]) if key in describe else NA
            row[key] = text
            shown[key.replace("_", " ")] = text
        values.append(row)
        display.append(shown)
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
            "protocol": protocol_table, "token_shapes": token_shape_table}
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
