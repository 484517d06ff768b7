"""Loading run results (metadata, train logs, scores, metrics) for the paper's tables and figures.

A ``ResultsReader`` records every file it reads (for provenance) and every file it misses; a
builder asks for all it needs, then calls ``raise_missing`` once, so a missing result is reported
together with all the others instead of leaving an empty cell.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd

from weldfilm.config import PROTOCOLS
from weldfilm.errors import CheckpointError
from weldfilm.io import read_json

SCORE_COLUMNS = ("sample_id", "class_code", "class_name", "label", "score")
MAX_LISTED_MISSING = 25
RERUN_EVALUATE = "re-run `weldfilm evaluate` for this run"


@dataclass(frozen=True)
class RunKey:
    """One training run: a method under a protocol (or a Causal-FiLM ablation) with one seed."""

    method: str
    seed: int
    protocol: str = "fair"
    ablation: str | None = None

    def relative_dir(self) -> Path:
        from weldfilm.paths import run_folder

        return run_folder(".", self.method, self.seed, self.protocol, self.ablation)

    def describe(self) -> str:
        what = f"ablation {self.ablation}" if self.ablation else f"{self.protocol}/{self.method}"
        return f"{what} seed {self.seed}"


def main_runs(cfg: dict, protocols: Iterable[str] = PROTOCOLS, methods: Iterable[str] | None = None) -> list[RunKey]:
    """Every (protocol, method, seed) run of the config, protocols outermost."""
    methods = list(methods) if methods is not None else list(cfg["methods"])
    return [RunKey(m, int(s), p) for p in protocols for m in methods for s in cfg["seeds"]]


def ablation_runs(cfg: dict) -> list[RunKey]:
    """Every (ablation, seed) run of the config (protocol fair, method causal_film)."""
    return [RunKey("causal_film", int(s), "fair", name) for name in cfg["ablations"] for s in cfg["seeds"]]


def as_float(value) -> float:
    """A metric value as float; None (JSON null) and non-numbers become NaN."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


class ResultsReader:
    """Reads results files below ``results_dir``; remembers what it read and what was missing."""

    def __init__(self, results_dir: str | Path):
        self.root = Path(results_dir)
        self.files_read: set[str] = set()
        self.missing: list[Path] = []

    def locate(self, relative: Path) -> Path | None:
        """The path of a results file (recorded as read), or None (recorded as missing)."""
        path = self.root / relative
        if not path.is_file():
            self.missing.append(path)
            return None
        self.files_read.add(relative.as_posix())
        return path

    def metrics(self, key: RunKey, split: str = "test") -> dict | None:
        path = self.locate(key.relative_dir() / "eval" / split / "metrics.json")
        return None if path is None else read_json(path, "metrics file")

    def metadata(self, key: RunKey) -> dict | None:
        path = self.locate(key.relative_dir() / "metadata.json")
        return None if path is None else read_json(path, "run metadata")

    def scores(self, key: RunKey, split: str = "test") -> pd.DataFrame | None:
        path = self.locate(key.relative_dir() / "eval" / split / "scores.csv")
        if path is None:
            return None
        try:
            frame = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"scores file {path} is corrupt ({exc}); {RERUN_EVALUATE}") from exc
        lacking = [c for c in SCORE_COLUMNS if c not in frame.columns]
        if lacking:
            raise CheckpointError(f"scores file {path} lacks columns {lacking}; {RERUN_EVALUATE}")
        return frame

    def train_log(self, key: RunKey) -> pd.DataFrame | None:
        path = self.locate(key.relative_dir() / "train_log.jsonl")
        if path is None:
            return None
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"training log {path} line {number} is not JSON ({exc}); "
                                      "re-run training") from exc
        if not rows:
            raise CheckpointError(f"training log {path} is empty; re-run `weldfilm train` for this run")
        return pd.DataFrame(rows)

    def raise_missing(self, what: str) -> None:
        """Raise one CheckpointError naming every missing file, if any."""
        if not self.missing:
            return
        unique = sorted(set(self.missing))
        listed = "\n  ".join(str(p) for p in unique[:MAX_LISTED_MISSING])
        more = f"\n  ... and {len(unique) - MAX_LISTED_MISSING} more" if len(unique) > MAX_LISTED_MISSING else ""
        raise CheckpointError(
            f"cannot build {what}: {len(unique)} results file(s) missing:\n  {listed}{more}\n"
            "Run the training and evaluation steps for these runs (the workflow does), "
            "or remove the method/seed/ablation from the config."
        )


def add_common_arguments(parser) -> None:
    """CLI arguments shared by `weldfilm tables|figures|paper`."""
    parser.add_argument("--config", default=None, help="config YAML (default: the repository's config.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted config override")
    parser.add_argument("--results", default=None, help="results folder (default: config key `results`)")
    parser.add_argument("--out", default=None, help="output folder (default: <results>/paper/...)")


def config_from_args(args) -> tuple[dict, Path]:
    """The validated config and the results folder named by the CLI arguments."""
    from weldfilm.config import load_config, parse_set_args

    cfg = load_config(args.config, parse_set_args(args.set))
    return cfg, Path(args.results or cfg["results"])
