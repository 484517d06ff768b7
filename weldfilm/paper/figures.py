"""The paper's figures (PNG + PDF each), drawn with matplotlib (Agg) from results files.

Curves and score distributions use the fair protocol and the first configured seed (the legend
says which); the heatmap and ablation bars use seed means (error bars = sample std over seeds);
the training curves show every seed. Palette: Okabe-Ito (colour-blind safe); fonts >= 8 pt at a
7-inch (two-column) or 3.5-inch (one-column) width.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from pandas.api.types import is_bool_dtype, is_numeric_dtype  # noqa: E402
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve  # noqa: E402

from weldfilm.data.layout import CLASS_NAMES  # noqa: E402
from weldfilm.errors import CheckpointError  # noqa: E402
from weldfilm.io import atomic_path, provenance, write_json  # noqa: E402
from weldfilm.paper import FIGURE_NAMES, method_label  # noqa: E402
from weldfilm.paper.results import (ResultsReader, RunKey, add_common_arguments, config_from_args,  # noqa: E402
                                    main_runs)
from weldfilm.paper.tables import ablation_table, per_defect_table  # noqa: E402

PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
         "ytick.labelsize": 8, "axes.prop_cycle": matplotlib.cycler(color=PALETTE), "savefig.dpi": 200,
         "pdf.fonttype": 42}
FULL_WIDTH = 7.0
NOT_LOSS_COLUMNS = {"epoch", "lr", "step", "steps", "time", "time_s", "elapsed_s", "seconds", "best", "is_best",
                    "patience", "epochs_without_improvement"}
CARD_FIGURE = Path("data") / "card" / "modalities.png"


def save_figure(fig, out_dir: Path, name: str) -> list[Path]:
    """Write <name>.png and <name>.pdf atomically and close the figure."""
    paths = []
    for suffix in (".png", ".pdf"):
        path = Path(out_dir) / f"{name}{suffix}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=suffix[1:], bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _first_seed(cfg: dict) -> int:
    return int(cfg["seeds"][0])


def roc_pr_figure(cfg: dict, reader: ResultsReader):
    """ROC and PR curves of every method (fair protocol, first seed)."""
    seed = _first_seed(cfg)
    scores = {m: reader.scores(RunKey(m, seed, "fair")) for m in cfg["methods"]}
    reader.raise_missing("the ROC/PR figure")
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(FULL_WIDTH, 3.0))
    for method, frame in scores.items():
        labels, values = frame["label"].to_numpy(), frame["score"].to_numpy()
        if len(np.unique(labels)) < 2:
            raise CheckpointError(f"scores of fair/{method} seed {seed} hold one class only; ROC/PR undefined")
        fpr, tpr, _ = roc_curve(labels, values)
        precision, recall, _ = precision_recall_curve(labels, values)
        ax_roc.plot(fpr, tpr, label=f"{method_label(method)} (AUROC {100 * roc_auc_score(labels, values):.1f})")
        ap = average_precision_score(labels, values)
        ax_pr.plot(recall, precision, label=f"{method_label(method)} (AP {100 * ap:.1f})")
    ax_roc.plot([0, 1], [0, 1], ls=":", color="grey", lw=0.8)
    ax_roc.set(xlabel="False positive rate", ylabel="True positive rate", title=f"ROC (TEST, fair, seed {seed})")
    ax_pr.set(xlabel="Recall", ylabel="Precision", title=f"Precision-recall (TEST, fair, seed {seed})")
    for ax in (ax_roc, ax_pr):
        ax.legend(loc="lower right" if ax is ax_roc else "lower left", frameon=False)
        ax.grid(alpha=0.3)
    return fig, []


def score_distribution_figure(cfg: dict, reader: ResultsReader):
    """Causal-FiLM anomaly scores per class (fair protocol, first seed) as box plots."""
    seed = _first_seed(cfg)
    frame = reader.scores(RunKey("causal_film", seed, "fair"))
    reader.raise_missing("the score-distribution figure")
    present = [name for _, name in sorted(CLASS_NAMES.items()) if name in set(frame["class_name"])]
    fig, ax = plt.subplots(figsize=(FULL_WIDTH, 3.2))
    groups = [frame.loc[frame["class_name"] == name, "score"].to_numpy() for name in present]
    box = ax.boxplot(groups, patch_artist=True, widths=0.6, medianprops={"color": "black"})
    for patch, name in zip(box["boxes"], present):
        patch.set_facecolor(PALETTE[0] if name == "good" else PALETTE[1])
    ax.set_xticks(range(1, len(present) + 1), [n.replace("_", " ") for n in present], rotation=35, ha="right")
    ax.set(xlabel="Class (blue: good, orange: defect)", ylabel="Anomaly score",
           title=f"Causal-FiLM scores per class (TEST, fair, seed {seed})")
    ax.grid(axis="y", alpha=0.3)
    absent = [n for n in CLASS_NAMES.values() if n not in present]
    return fig, [f"classes absent from TEST scores: {absent}"] if absent else []


def per_defect_heatmap(cfg: dict, reader: ResultsReader):
    """Methods x defect classes I-AUROC (fair, mean over seeds), cells annotated; n/a in grey."""
    table = per_defect_table(cfg, reader)
    fair = table.values[table.values["protocol"] == "fair"]
    classes = [c for c in fair.columns if c not in ("protocol", "method")]
    data = fair[classes].to_numpy(dtype=float) * 100
    fig, ax = plt.subplots(figsize=(FULL_WIDTH, 1.2 + 0.45 * len(fair)))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for (i, j), value in np.ndenumerate(data):
        text = "n/a" if math.isnan(value) else f"{value:.0f}"
        dark_cell = not math.isnan(value) and value <= 60
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark_cell else "black")
    ax.set_xticks(range(len(classes)), [c.replace("_", " ") for c in classes], rotation=35, ha="right")
    ax.set_yticks(range(len(fair)), [method_label(m) for m in fair["method"]])
    ax.set_xlabel("Defect class (vs good)")
    ax.set_title("Per-defect I-AUROC in % (TEST, fair, mean over seeds)")
    fig.colorbar(image, ax=ax, label="I-AUROC (%)", fraction=0.03)
    return fig, table.notes


def ablation_figure(cfg: dict, reader: ResultsReader):
    """I-AUROC per ablation, error bars = std over seeds; the full model first."""
    table = ablation_table(cfg, reader)
    values = table.values
    fig, ax = plt.subplots(figsize=(FULL_WIDTH, 3.0))
    colours = [PALETTE[0] if name == "full" else PALETTE[1] for name in values["ablation"]]
    std = np.nan_to_num(values["i_auroc_std"].to_numpy(dtype=float) * 100)
    ax.bar(range(len(values)), values["i_auroc_mean"] * 100, yerr=std, color=colours, capsize=3)
    ax.axhline(values["i_auroc_mean"].iloc[0] * 100, ls="--", lw=0.8, color="grey", label="full model")
    ax.set_xticks(range(len(values)), list(values["ablation"]), rotation=35, ha="right")
    ax.set(ylabel="I-AUROC (%)", xlabel="Ablation", title="Causal-FiLM ablations (TEST, fair, mean ± std over seeds)")
    ax.legend(frameon=False, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return fig, table.notes


def loss_term_columns(log) -> list[str]:
    """Numeric columns of a training log that are loss terms ('loss' first)."""
    numeric = [c for c in log.columns if is_numeric_dtype(log[c]) and not is_bool_dtype(log[c])]
    terms = [c for c in numeric if c not in NOT_LOSS_COLUMNS and not c.startswith(("val_", "test_")) and "lr" not in c]
    return sorted(terms, key=lambda c: (c != "loss", c))


def training_curve_figure(cfg: dict, reader: ResultsReader):
    """Loss terms and validation I-AUROC per epoch for Causal-FiLM (fair), one line per seed."""
    keys = main_runs(cfg, protocols=("fair",), methods=("causal_film",))
    logs = {k.seed: reader.train_log(k) for k in keys}
    reader.raise_missing("the training-curve figure")
    terms = sorted({t for log in logs.values() for t in loss_term_columns(log)}, key=lambda c: (c != "loss", c))
    panels = terms + ["val_auroc"]
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(FULL_WIDTH, 2.2 * nrows), squeeze=False)
    notes = []
    for ax, column in zip(axes.flat, panels):
        for colour, (seed, log) in zip(PALETTE, logs.items()):
            x = log["epoch"] if "epoch" in log else np.arange(len(log))
            if column in log:
                factor = 100 if column == "val_auroc" else 1
                ax.plot(x, log[column] * factor, color=colour, marker=".", ms=3, label=f"seed {seed}")
            else:
                notes.append(f"seed {seed}: `{column}` not logged")
        ax.set(xlabel="Epoch", ylabel="val I-AUROC (%)" if column == "val_auroc" else column, title=column)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(frameon=False)
    fig.suptitle("Causal-FiLM training (fair protocol, all seeds)", fontsize=9)
    fig.tight_layout()
    return fig, notes


def modality_figure(cfg: dict, reader: ResultsReader):
    """The dataset card's figure of the four modalities of example runs (drawn by weldfilm.data.card)."""
    path = reader.locate(CARD_FIGURE)
    reader.raise_missing("the modality figure (made by `weldfilm card`)")
    image = plt.imread(path)
    height, width = image.shape[:2]
    fig = plt.figure(figsize=(FULL_WIDTH, FULL_WIDTH * height / width))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(image)
    ax.axis("off")
    return fig, [f"reproduced from the dataset card figure {CARD_FIGURE.as_posix()}"]


FIGURE_BUILDERS = {"roc_pr": roc_pr_figure, "score_distributions": score_distribution_figure,
                   "per_defect_heatmap": per_defect_heatmap, "ablations": ablation_figure,
                   "training_curves": training_curve_figure, "modalities": modality_figure}
assert tuple(FIGURE_BUILDERS) == FIGURE_NAMES


def build_figures(cfg: dict, results_dir, out_dir) -> list[Path]:
    """Draw every figure of FIGURE_NAMES into ``out_dir``; write figures.provenance.json beside them."""
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    written, record = [], {}
    with plt.rc_context(STYLE):
        for name, builder in FIGURE_BUILDERS.items():
            reader = ResultsReader(results_dir)
            fig, notes = builder(cfg, reader)
            written += save_figure(fig, out_dir, name)
            record[name] = {"files_read": sorted(reader.files_read), "notes": notes}
    prov_path = out_dir / "figures.provenance.json"
    write_json(prov_path, provenance(cfg, seeds=list(cfg["seeds"]), results_dir=str(results_dir), figures=record))
    return written + [prov_path]


def add_cli_arguments(parser) -> None:
    add_common_arguments(parser)


def cli(args) -> int:
    cfg, results = config_from_args(args)
    out = Path(args.out) if args.out else results / "paper" / "figures"
    for path in build_figures(cfg, results, out):
        print(path)
    return 0
