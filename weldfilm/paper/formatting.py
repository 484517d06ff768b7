"""Seed statistics and the text forms of a table: display strings, Markdown and LaTeX (booktabs)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

NA = "n/a"


@dataclass
class SeedStats:
    """Mean and sample standard deviation (ddof=1) of one metric over seeds, NaN values left out."""

    mean: float
    std: float
    n_valid: int
    n_seeds: int

    @classmethod
    def of(cls, values) -> "SeedStats":
        arr = np.asarray([float(v) for v in values], dtype=float)
        valid = arr[~np.isnan(arr)]
        mean = float(valid.mean()) if valid.size else math.nan
        std = float(valid.std(ddof=1)) if valid.size >= 2 else math.nan
        return cls(mean, std, int(valid.size), int(arr.size))

    @property
    def partial(self) -> bool:
        return 0 < self.n_valid < self.n_seeds


def pct(value: float, digits: int = 1) -> str:
    """A fraction in [0, 1] as a percentage string; NaN -> 'n/a'."""
    return NA if value is None or math.isnan(value) else f"{100 * value:.{digits}f}"


def pct_mean_std(stats: SeedStats) -> str:
    """'90.7 ± 1.2' (percent); only the mean for a single valid seed; 'n/a' when none is valid."""
    if stats.n_valid == 0:
        return NA
    if stats.n_valid == 1:
        return pct(stats.mean)
    return f"{pct(stats.mean)} ± {pct(stats.std)}"


def signed_points(value: float) -> str:
    """A difference of fractions as signed percentage points ('+1.3', '-0.4')."""
    return NA if math.isnan(value) else f"{100 * value:+.1f}"


def format_value(value) -> str:
    """Compact text of a metadata value: shapes as 32×64×64, lists comma-separated, dicts k: v."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return "×".join(str(v) for v in value)
        return ", ".join(format_value(v) for v in value) if value else "none"
    if isinstance(value, dict):
        parts = [f"{k}: ({format_value(v)})" if isinstance(v, dict) and v else f"{k}: {format_value(v)}"
                 for k, v in value.items()]
        return "; ".join(parts) if parts else "none"
    return str(value)


@dataclass
class Table:
    """One paper table: numbers for the CSV, display strings for Markdown/LaTeX, and notes."""

    name: str
    caption: str
    values: pd.DataFrame
    display: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def to_markdown(table: Table) -> str:
    """The table as a Markdown pipe table, its caption above and notes below."""
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = [cell(c) for c in table.display.columns]
    lines = [f"**Table ({table.name}).** {table.caption}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.display.itertuples(index=False)]
    if table.notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in table.notes]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "×": r"$\times$", "Δ": r"$\Delta$", "–": "--", "—": "---",
                  "→": r"$\rightarrow$", "≥": r"$\geq$", "≤": r"$\leq$", "≈": r"$\approx$", "·": r"$\cdot$"}
_LATEX_PATTERN = re.compile("|".join(re.escape(k) for k in _LATEX_SPECIAL))


def latex_escape(text) -> str:
    """Escape LaTeX special characters (and write ±, ×, Δ as math)."""
    return _LATEX_PATTERN.sub(lambda m: _LATEX_SPECIAL[m.group(0)], str(text))


def latex_text(text) -> str:
    """Escaped prose with Markdown `code` spans as \\texttt."""
    return re.sub(r"`([^`]*)`", r"\\texttt{\1}", latex_escape(text))


def to_latex(table: Table) -> str:
    """The table as a LaTeX table environment with booktabs rules, caption, label and notes."""
    cols = list(table.display.columns)
    spec = "l" + "c" * (len(cols) - 1)
    lines = [r"\begin{table}[htbp]", r"\centering", rf"\caption{{{latex_text(table.caption)}}}",
             rf"\label{{tab:{table.name}}}", r"\small", rf"\resizebox{{\linewidth}}{{!}}{{\begin{{tabular}}{{{spec}}}",
             r"\toprule", " & ".join(latex_escape(c) for c in cols) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(v) for v in row) + r" \\" for row in table.display.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}}"]
    if table.notes:
        lines += [r"\par\smallskip\footnotesize\raggedright Notes: " + " ".join(latex_text(n) for n in table.notes)]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"
