"""The manifest: one row per run with its split (shared/spec/dataset.md, "The paper's manifest").

Two modes:

- **paper**: ``paper_manifest`` is the authors' ``manifest.csv``; its SPLIT is used exactly and
  every listed run must exist under the data root (an error lists the missing ones).
- **scan**: runs are discovered under the data root and split with a seed in the paper's
  proportions: TRAIN ~70 % of the good runs (good only; the paper's 4,040 runs give exactly
  576/1732/1732), at most ``max_train_good`` of them; every other run goes to VAL or TEST,
  alternating within each class (stratified). The synthetic default (config.yaml
  ``data.max_train_good_runs: 40`` with 120 good runs) puts as many good runs in VAL and in TEST as
  in TRAIN, so that its I-AUROC CIs are narrow.

``exclude_runs`` (SUBDIRS values) are dropped after the split, so excluding a broken run does not
reshuffle the others; the exclusion is recorded in the sidecar ``manifest.json``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from weldfilm.data.layout import RunRef, discover_runs, run_ref
from weldfilm.errors import DataError
from weldfilm.io import atomic_path, provenance, write_json

PAPER_COLUMNS = ["CATEGORY", "WELD_TYPE", "THICKNESS_MM", "STEEL_TYPE", "SAMPLES", "CURRENT_A", "VOLTAGE_V",
                 "GAS_BAR", "ROBOT_SPEED_CPM", "DIRECTORY", "SUBDIRS", "SPLIT"]
MANIFEST_COLUMNS = PAPER_COLUMNS + ["CLASS_CODE"]
SPLITS = ("TRAIN", "VAL", "TEST")
TRAIN_GOOD_FRACTION = 0.7  # paper: 576 of 819 good runs
STEEL_TYPES = ("BSK46", "FE410")


def configuration_fields(configuration: str) -> dict[str, str]:
    """Manifest fields that a configuration folder name reveals; the rest stay empty.

    ``porosity_weld_17_12-22-22_plane_plate_BSK46`` -> CATEGORY ``porosity_weld``,
    WELD_TYPE ``NON_FILLET`` (plane plate), STEEL_TYPE ``BSK46``.
    """
    name = Path(configuration).name
    fields = {}
    match = re.match(r"^([A-Za-z_]+?)_\d", name)
    if match:
        fields["CATEGORY"] = match.group(1)
    lowered = name.lower()
    if "fillet" in lowered:
        fields["WELD_TYPE"] = "NON_FILLET" if "non_fillet" in lowered else "FILLET"
    elif "plane_plate" in lowered:
        fields["WELD_TYPE"] = "NON_FILLET"
    for steel in STEEL_TYPES:
        if steel.lower() in lowered:
            fields["STEEL_TYPE"] = steel
    thickness = re.search(r"(\d+)\s*mm", lowered)
    if thickness:
        fields["THICKNESS_MM"] = thickness.group(1)
    return fields


def _by_configuration(subdirs: list[str], rng: np.random.Generator) -> list[list[str]]:
    """The runs grouped by configuration folder (groups sorted by name), each group shuffled."""
    groups: dict[str, list[str]] = {}
    for subdir in subdirs:
        groups.setdefault(str(Path(subdir).parent), []).append(subdir)
    return [[groups[name][i] for i in rng.permutation(len(groups[name]))] for name in sorted(groups)]


def _round_robin(groups: list[list[str]]) -> list[str]:
    """Interleave groups (a[0], b[0], c[0], a[1], ...) so that any prefix samples every group evenly."""
    longest = max((len(g) for g in groups), default=0)
    return [g[i] for i in range(longest) for g in groups if i < len(g)]


def scan_split(runs: list[RunRef], seed: int, max_train_good: int | None = None) -> dict[str, str]:
    """SUBDIRS -> split: seeded, TRAIN = ~70 % of good runs (at most ``max_train_good``), the rest alternating
    VAL/TEST.

    Stratified by class and, within a class, by configuration folder: TRAIN takes the same share of
    the good runs of every good configuration, and VAL/TEST alternate inside each configuration, so that no
    configuration (plate, lighting, process preset) lands mostly in one split.
    """
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[str]] = {}
    for run in sorted(runs, key=lambda r: r.subdir):
        by_class.setdefault(run.class_code, []).append(run.subdir)
    grouped = {code: _by_configuration(subdirs, rng) for code, subdirs in sorted(by_class.items())}
    good = _round_robin(grouped.pop(0, []))
    n_train = int(round(TRAIN_GOOD_FRACTION * len(good)))
    if max_train_good is not None:
        n_train = min(n_train, int(max_train_good))
    split = {subdir: "TRAIN" for subdir in good[:n_train]}
    rest_good = set(good[n_train:])
    rest_groups = _by_configuration(sorted(rest_good), rng)
    rest_groups += [group for code in sorted(grouped) for group in grouped[code]]
    rest = [subdir for group in rest_groups for subdir in group]
    for position, subdir in enumerate(rest):
        split[subdir] = "VAL" if position % 2 == 0 else "TEST"
    return split


def _scan_rows(runs: list[RunRef], seed: int, max_train_good: int | None) -> pd.DataFrame:
    split = scan_split(runs, seed, max_train_good)
    per_configuration = pd.Series([r.configuration for r in runs]).value_counts().to_dict()
    rows = []
    for run in runs:
        row = dict.fromkeys(PAPER_COLUMNS, "")
        row.update(configuration_fields(run.configuration))
        row.update(SAMPLES=str(per_configuration[run.configuration]), DIRECTORY=run.configuration,
                   SUBDIRS=run.subdir, SPLIT=split[run.subdir])
        rows.append(row)
    return pd.DataFrame(rows, columns=PAPER_COLUMNS)


def _read_csv_as_text(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} {path} cannot be parsed as CSV ({exc})") from exc
    table.columns = [c.strip() for c in table.columns]
    return table


def _check_table(table: pd.DataFrame, path: Path, what: str, required: list[str]) -> pd.DataFrame:
    """Columns present, SPLIT names valid (case-insensitive, stored upper-case), SUBDIRS unique."""
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(f"{what} {path} lacks column(s) {missing}; expected {required}")
    if table.empty:
        raise DataError(f"{what} {path} has no rows")
    table = table.copy()
    table["SPLIT"] = table["SPLIT"].str.strip().str.upper()
    bad = sorted(set(table["SPLIT"]) - set(SPLITS))
    if bad:
        raise DataError(f"{what} {path}: unknown SPLIT value(s) {bad}; allowed: {list(SPLITS)}")
    table["SUBDIRS"] = table["SUBDIRS"].str.strip().str.strip("/")
    duplicated = sorted(set(table.loc[table["SUBDIRS"].duplicated(), "SUBDIRS"]))
    if duplicated:
        raise DataError(f"{what} {path}: SUBDIRS listed more than once: {duplicated[:10]}")
    return table


def _resolve_paper_subdirs(table: pd.DataFrame, runs: list[RunRef], data_root, path: Path) -> pd.Series:
    """Map each listed SUBDIRS to a run found under the data root (exact, or one level deeper)."""
    found = {r.subdir for r in runs}
    by_tail = {}
    for run in runs:
        tail = "/".join(run.subdir.split("/")[-2:])
        by_tail.setdefault(tail, []).append(run.subdir)
    resolved, missing = [], []
    for subdir in table["SUBDIRS"]:
        if subdir in found:
            resolved.append(subdir)
        elif len(by_tail.get(subdir, [])) == 1:
            resolved.append(by_tail[subdir][0])
        else:
            resolved.append(None)
            missing.append(subdir)
    if missing:
        shown = ", ".join(missing[:20]) + (f" ... ({len(missing)} in all)" if len(missing) > 20 else "")
        raise DataError(f"paper manifest {path} lists {len(missing)} run(s) not found under data root {data_root}: "
                        f"{shown} (check data.root, or list them in data.exclude_runs)")
    return pd.Series(resolved, index=table.index)


def _paper_rows(paper_manifest, runs: list[RunRef], data_root, exclude: set[str]) -> pd.DataFrame:
    path = Path(paper_manifest)
    table = _check_table(_read_csv_as_text(path, "paper manifest"), path, "paper manifest", ["SUBDIRS", "SPLIT"])
    for column in PAPER_COLUMNS:
        if column not in table.columns:
            table[column] = ""
    listed = table["SUBDIRS"].isin(exclude)
    kept = table[~listed].copy()
    kept["SUBDIRS"] = _resolve_paper_subdirs(kept, runs, data_root, path)
    return pd.concat([kept, table[listed]])[PAPER_COLUMNS]


def build_manifest(data_root, out_csv, paper_manifest=None, seed: int = 0, exclude_runs=(),
                   max_train_good: int | None = None) -> pd.DataFrame:
    """Write ``out_csv`` (+ sidecar ``<stem>.json``) and return the manifest table.

    Same inputs and seed give the same CSV byte for byte. ``exclude_runs`` are SUBDIRS values;
    each must be a run of the manifest (a typo is an error, not a silent no-op).
    ``max_train_good`` caps the scan mode's TRAIN good runs (the paper's manifest fixes its own split).
    """
    runs = discover_runs(data_root)
    exclude = {str(s).strip().strip("/") for s in exclude_runs}
    if paper_manifest:
        table = _paper_rows(paper_manifest, runs, data_root, exclude)
    else:
        table = _scan_rows(runs, seed, max_train_good)
    unknown = sorted(exclude - set(table["SUBDIRS"]))
    if unknown:
        raise DataError(f"data.exclude_runs names run(s) that are not in the manifest: {unknown} "
                        "(use SUBDIRS values: '<configuration folder>/<run id>')")
    table = table[~table["SUBDIRS"].isin(exclude)].copy()
    table["CLASS_CODE"] = [f"{run_ref(s).class_code:02d}" for s in table["SUBDIRS"]]
    table = table.sort_values("SUBDIRS", kind="stable").reset_index(drop=True)[MANIFEST_COLUMNS]
    out_csv = Path(out_csv)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n")
    counts = {split: int((table["SPLIT"] == split).sum()) for split in SPLITS}
    write_json(out_csv.with_suffix(".json"), {
        "mode": "paper" if paper_manifest else "scan",
        "data_root": str(data_root),
        "paper_manifest": str(paper_manifest) if paper_manifest else None,
        "seed": None if paper_manifest else int(seed),
        "max_train_good": None if paper_manifest or max_train_good is None else int(max_train_good),
        "excluded_runs": sorted(exclude),
        "counts": counts,
        "provenance": provenance(),
    })
    return table


def read_manifest(path) -> pd.DataFrame:
    """Read a manifest written by ``build_manifest``; DataError naming the file for any problem."""
    path = Path(path)
    table = _check_table(_read_csv_as_text(path, "manifest"), path, "manifest", MANIFEST_COLUMNS)
    for subdir in table["SUBDIRS"]:
        run_ref(subdir)  # raises for a malformed run id / unknown class code
    return table


def add_cli_arguments(parser) -> None:
    parser.add_argument("--data-root", required=True, help="folder holding the runs (any depth)")
    parser.add_argument("--out", required=True, help="manifest CSV to write (a .json sidecar is written beside it)")
    parser.add_argument("--paper-manifest", default=None, help="the paper's manifest.csv: use its split exactly")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scan-mode split")
    parser.add_argument("--max-train-good", type=int, default=None,
                        help="at most this many good runs in the scan-mode TRAIN split (default: ~70 %% of them)")
    parser.add_argument("--exclude", nargs="*", default=[], metavar="RUN", help="SUBDIRS values to leave out")


def cli(args) -> int:
    table = build_manifest(args.data_root, args.out, args.paper_manifest, args.seed, args.exclude,
                           args.max_train_good)
    counts = table["SPLIT"].value_counts().reindex(list(SPLITS), fill_value=0)
    print(f"wrote {args.out}: " + ", ".join(f"{split} {n}" for split, n in counts.items()))
    return 0
