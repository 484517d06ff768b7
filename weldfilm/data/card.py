"""Dataset card: runs per class and split (``counts.csv``, ``counts.md``) and a modality figure.

``modalities.png`` shows, for one good and one defective run, a few video frames, the mel
spectrogram, the six sensor traces and the post-weld photos, as the models receive them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from weldfilm.data.dataset import PREPROCESS_KEYS, WeldingDataset
from weldfilm.data.layout import CLASS_NAMES, NUMERIC_SENSOR_COLUMNS
from weldfilm.data.manifest import SPLITS, read_manifest
from weldfilm.io import atomic_path, write_text

FIGURE_FRAMES = 4


def count_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Runs per class (rows, code order) x split (columns) with totals; every class and split listed."""
    codes = manifest["CLASS_CODE"].astype(int)
    table = pd.crosstab(codes, manifest["SPLIT"]).reindex(index=sorted(CLASS_NAMES), columns=list(SPLITS),
                                                          fill_value=0)
    table["total"] = table.sum(axis=1)
    table.insert(0, "class", [CLASS_NAMES[c] for c in table.index])
    table.index = [f"{c:02d}" for c in table.index]
    table.index.name = "code"
    total = table[list(SPLITS) + ["total"]].sum()
    table.loc["all"] = ["all", *total.tolist()]
    return table


def markdown_table(table: pd.DataFrame) -> str:
    header = ["code", *table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for code, row in table.iterrows():
        lines.append("| " + " | ".join([str(code), *(str(v) for v in row.tolist())]) + " |")
    return "\n".join(lines) + "\n"


def _montage(stack: np.ndarray) -> np.ndarray:
    """(K, 3, H, W) -> one (H, K*W, 3) strip."""
    return np.concatenate(list(stack.transpose(0, 2, 3, 1)), axis=1)


def plot_modalities(samples: list[dict], out_png, titles: list[str]) -> None:
    """One row per sample: video frames, mel spectrogram, sensor traces, post-weld photos."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(samples), 4, figsize=(20, 3.6 * len(samples)), squeeze=False,
                             gridspec_kw={"width_ratios": [1.6, 1.2, 1.2, 2.0]})
    for row, (sample, title) in enumerate(zip(samples, titles)):
        video = sample["video"].numpy()
        frames = video[np.linspace(0, len(video) - 1, FIGURE_FRAMES).round().astype(int)]
        ax = axes[row, 0]
        ax.imshow(_montage(frames))
        ax.set_title(f"{title}\nvideo: {FIGURE_FRAMES} of {len(video)} frames", fontsize=9, loc="left")
        ax.set_xlabel("frames (left to right in time)")
        ax.set_yticks([])
        ax.set_xticks([])
        ax = axes[row, 1]
        mel = ax.imshow(sample["audio"].numpy()[0], origin="lower", aspect="auto", cmap="magma")
        fig.colorbar(mel, ax=ax, label="dB")
        ax.set_title("audio: mel spectrogram")
        ax.set_xlabel("time frame")
        ax.set_ylabel("mel bin")
        ax = axes[row, 2]
        sensor = sample["sensor"].numpy()
        for channel in range(sensor.shape[1]):
            name = NUMERIC_SENSOR_COLUMNS[channel] if channel < len(NUMERIC_SENSOR_COLUMNS) else f"pad {channel}"
            ax.plot(sensor[:, channel], label=name, linewidth=1)
        ax.set_title("sensor (per-channel z-score)")
        ax.set_xlabel("time step (resampled)")
        ax.set_ylabel("z-score")
        ax.legend(fontsize=6, loc="upper right")
        ax = axes[row, 3]
        count = int(sample["num_images"])
        ax.imshow(_montage(sample["post_weld_images"].numpy()))
        ax.set_title(f"post-weld photos: {count} real of {len(sample['post_weld_images'])} slots")
        ax.set_xlabel("view")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def example_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """The first good and the first defective run (by SUBDIRS) of the manifest, as one TEST split."""
    ordered = manifest.sort_values("SUBDIRS")
    is_good = ordered["CLASS_CODE"].astype(int) == 0
    picks = [ordered[mask].head(1) for mask in (is_good, ~is_good)]
    rows = pd.concat(picks).copy()
    rows["SPLIT"] = "TEST"
    return rows


def write_dataset_card(manifest_csv, data_root, out_dir, preprocess: dict) -> dict:
    """Write ``counts.csv``, ``counts.md`` and ``modalities.png`` below ``out_dir``; return the counts."""
    out_dir = Path(out_dir)
    manifest = read_manifest(manifest_csv)
    table = count_table(manifest)
    with atomic_path(out_dir / "counts.csv") as tmp:
        table.to_csv(tmp, lineterminator="\n")
    write_text(out_dir / "counts.md", "# Runs per class and split\n\n" + markdown_table(table))
    sizes = {k: v for k, v in (preprocess or {}).items() if k in PREPROCESS_KEYS}
    sizes["audio_type"] = "mel"
    dataset = WeldingDataset(example_rows(manifest), data_root, "test", allow_missing_images=True, **sizes)
    samples = [dataset[i] for i in range(len(dataset))]
    titles = [f"{'GOOD' if r.label == 0 else 'DEFECT'}: {r.class_name}\n{r.configuration}/\n{r.run_id}"
              for r in dataset.runs]
    plot_modalities(samples, out_dir / "modalities.png", titles)
    return {"counts": {code: row.drop("class").to_dict() for code, row in table.iterrows()}}


def add_cli_arguments(parser) -> None:
    parser.add_argument("--manifest", required=True, help="manifest CSV")
    parser.add_argument("--data-root", required=True, help="folder holding the runs")
    parser.add_argument("--out", required=True, help="folder for counts.csv, counts.md, modalities.png")
    parser.add_argument("--config", default=None, help="config.yaml whose preprocess sizes to use (default: schema defaults)")


def cli(args) -> int:
    from weldfilm.config import load_config, prepare

    cfg = load_config(args.config) if args.config else prepare({})
    write_dataset_card(args.manifest, args.data_root, args.out, cfg["preprocess"])
    print(f"wrote dataset card to {args.out}")
    return 0
