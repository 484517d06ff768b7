"""The paper's outputs: tables, figures and the rendered paper, built from results files.

The workflow expands its outputs from the constants below (file names relative to the output
folder it passes). Functions live in the submodules (imported lazily so that importing the
constants stays cheap):

- ``weldfilm.paper.tables.build_tables(cfg, results_dir, out_dir)``
- ``weldfilm.paper.figures.build_figures(cfg, results_dir, out_dir)``
- ``weldfilm.paper.render.render_paper(cfg, paper_src_dir, results_dir, out_dir)``

``render_paper`` reads the tables from ``out_dir/TABLES_DIR`` and figures from ``out_dir/FIGURES_DIR``.
"""

from __future__ import annotations

TABLES_DIR = "tables"
FIGURES_DIR = "figures"

TABLE_NAMES = ("main", "per_defect", "ablations", "protocol", "token_shapes", "deviations")
TABLE_SUFFIXES = (".csv", ".md", ".tex", ".provenance.json")
TABLES = tuple(f"{name}{suffix}" for name in TABLE_NAMES for suffix in TABLE_SUFFIXES)

FIGURE_NAMES = ("roc_pr", "score_distributions", "per_defect_heatmap", "ablations", "training_curves", "modalities")
FIGURE_SUFFIXES = (".png", ".pdf")
FIGURES = tuple(f"{name}{suffix}" for name in FIGURE_NAMES for suffix in FIGURE_SUFFIXES) + ("figures.provenance.json",)

PAPER_OUTPUTS = ("paper.md", "paper.html", "render.json")
PAPER_OPTIONAL_OUTPUTS = ("paper.pdf", "paper.tex")  # only when a LaTeX engine is on PATH

# Published real-data numbers of Causal-FiLM (paper, Weld-4M TEST), a reference only.
PUBLISHED_CAUSAL_FILM = {"i_auroc": 0.907, "ap": 0.991, "f1_max": 0.974}

METHOD_LABELS = {
    "causal_film": "Causal-FiLM",
    "late_fusion": "Late Fusion",
    "m3dm": "M3DM",
    "dinomaly": "Dinomaly",
}


def method_label(method: str) -> str:
    """Display name of a method ('causal_film' -> 'Causal-FiLM')."""
    return METHOD_LABELS.get(method, method)


def __getattr__(name):
    lazy = {"build_tables": "tables", "build_figures": "figures", "render_paper": "render"}
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(f"weldfilm.paper.{lazy[name]}"), name)
    raise AttributeError(f"module 'weldfilm.paper' has no attribute '{name}'")
