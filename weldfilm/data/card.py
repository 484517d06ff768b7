"""Dataset card: runs per class and split (``counts.csv``, ``counts.md``), how easy each class is
(``separability.csv``, ``separability.md``) and a modality figure.

``separability`` gives, per defect class and modality, the best of a few simple hand features
(sensor current/voltage level and spread, gas flow; sound RMS and impulsiveness; video brightness
and flicker; the first photo's contrast and dark share) by its AUROC against the good runs,
direction-free (max(AUROC, 1 - AUROC): 0.5 = no separation, 1.0 = one threshold separates every
run of the class from every good run). A class that a single number separates is easy; one that
no hand feature separates needs what the models learn.

``modalities.png`` shows, for one good and one defective run, a few video frames, the mel
spectrogram, the six sensor traces and the post-weld photos, as the models receive them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from weldfilm.data.dataset import PREPROCESS_KEYS, WeldingDataset
from weldfilm.data.layout import CLASS_NAMES, NUMERIC_SENSOR_COLUMNS, run_ref
from weldfilm.data.manifest import SPLITS, read_manifest
from weldfilm.data.readers import list_images
from weldfilm.errors import data_error
from weldfilm.io import atomic_path, write_text

FIGURE_FRAMES = 4
MAX_RUNS_PER_CLASS = 200  # hand features of at most this many runs per class (seeded choice): bounded cost
# modality -> {feature: what it measures}; the separability table names the features this way
HAND_FEATURES = {
    "sensor": {"current_mean": "mean arc current", "current_std": "std of the arc current",
               "voltage_mean": "mean arc voltage", "voltage_std": "std of the arc voltage",
               "gas_flow_mean": "mean CO2 flow"},
    "audio": {"audio_rms": "sound RMS", "audio_kurtosis": "sound kurtosis (impulsiveness)"},
    "video": {"video_brightness": "median frame brightness", "video_flicker": "frame-to-frame brightness change"},
    "photos": {"photo_contrast": "grey-level std of the first photo", "photo_dark_share": "near-black share of the first photo"},
}


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


def _sensor_features(run_id: str, path: Path) -> dict:
    table = pd.read_csv(path)
    current = pd.to_numeric(table["Primary Weld Current"], errors="coerce").to_numpy(float)
    voltage = pd.to_numeric(table["Secondary Weld Voltage"], errors="coerce").to_numpy(float)
    if not np.isfinite(current).any() or np.nanmax(current) <= 0:
        raise data_error(run_id, path, "no arc current above 0 in 'Primary Weld Current'",
                         "check the file, or list the run in data.exclude_runs")
    arc = current > 0.3 * np.nanmax(current)  # samples while the arc burns
    return {"current_mean": float(np.mean(current[arc])), "current_std": float(np.std(current[arc])),
            "voltage_mean": float(np.nanmean(voltage[arc])), "voltage_std": float(np.nanstd(voltage[arc])),
            "gas_flow_mean": float(pd.to_numeric(table["CO2 Weld Flow"], errors="coerce").mean())}


def _audio_features(run_id: str, path: Path) -> dict:
    import soundfile as sf

    try:
        sound, _ = sf.read(path, dtype="float32")
    except (RuntimeError, OSError) as exc:  # soundfile.LibsndfileError is a RuntimeError
        raise data_error(run_id, path, f"the sound cannot be decoded ({exc})",
                         "restore the recording or list the run in data.exclude_runs") from exc
    sound = sound if sound.ndim == 1 else sound.mean(axis=1, dtype=np.float32)
    centred = sound - np.float32(sound.mean(dtype=np.float64))
    squared = centred * centred  # float32 dot products: 5x faster than float64 powers of a 192 kHz track
    power = float(squared.mean(dtype=np.float64))
    return {"audio_rms": float(np.sqrt(float(np.dot(sound, sound)) / sound.size)),
            "audio_kurtosis": float(np.dot(squared, squared)) / sound.size / (power ** 2 + 1e-30)}


def _video_features(run_id: str, path: Path) -> dict:
    import cv2

    capture = cv2.VideoCapture(str(path))
    means = []
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            means.append(float(frame.mean()))
    finally:
        capture.release()
    if len(means) < 2:
        raise data_error(run_id, path, "fewer than 2 decodable frames", "re-export it or list the run in data.exclude_runs")
    means = np.asarray(means)
    return {"video_brightness": float(np.median(means)),
            "video_flicker": float(np.std(np.diff(means)) / (np.mean(means) + 1e-9))}


def _photo_features(run_id: str, folder: Path) -> dict:
    import cv2

    photos = list_images(folder)
    if not photos:
        return {"photo_contrast": np.nan, "photo_dark_share": np.nan}
    gray = cv2.imread(str(photos[0]), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise data_error(run_id, photos[0], "image cannot be decoded", "replace it or list the run in data.exclude_runs")
    return {"photo_contrast": float(gray.std()), "photo_dark_share": float((gray < 30).mean())}


def hand_features(data_root, subdir: str) -> dict:
    """The HAND_FEATURES of one run, read from its files (csv, flac, avi, first photo)."""
    run = run_ref(subdir)
    files = run.files(data_root)
    return {**_sensor_features(run.run_id, files["csv"]), **_audio_features(run.run_id, files["flac"]),
            **_video_features(run.run_id, files["avi"]), **_photo_features(run.run_id, files["images"])}


def feature_table(manifest: pd.DataFrame, data_root, max_per_class: int = MAX_RUNS_PER_CLASS,
                  seed: int = 0) -> pd.DataFrame:
    """Hand features of the manifest's runs (every split; at most ``max_per_class`` per class, seeded)."""
    codes = manifest["CLASS_CODE"].astype(int)
    rng = np.random.default_rng(seed)
    picked = []
    for code in sorted(codes.unique()):
        subdirs = sorted(manifest.loc[codes == code, "SUBDIRS"])
        if len(subdirs) > max_per_class:
            subdirs = sorted(rng.choice(subdirs, size=max_per_class, replace=False).tolist())
        picked += [(code, s) for s in subdirs]
    from weldfilm.training.progress import progress

    rows = [{"SUBDIRS": subdir, "class_code": code, **hand_features(data_root, subdir)}
            for code, subdir in progress(picked, "card: hand features", unit="run")]
    return pd.DataFrame(rows)


def separability_table(features: pd.DataFrame) -> pd.DataFrame:
    """Per defect class: for each modality the hand feature that best separates it from the good runs
    (direction-free AUROC) with its direction, and the best over all modalities."""
    good = features[features["class_code"] == 0]
    rows = []
    for code in sorted(c for c in CLASS_NAMES if c != 0):
        runs = features[features["class_code"] == code]
        row = {"code": f"{code:02d}", "class": CLASS_NAMES[code], "runs": len(runs), "good_runs": len(good)}
        best = (np.nan, "", "")
        for modality, names in HAND_FEATURES.items():
            choice = (np.nan, "", "")
            for name in names:
                values = pd.concat([good[name], runs[name]]).to_numpy(float)
                labels = np.r_[np.zeros(len(good)), np.ones(len(runs))]
                keep = np.isfinite(values)
                if len(runs) == 0 or len(good) == 0 or len(np.unique(labels[keep])) < 2:
                    continue
                auroc = float(roc_auc_score(labels[keep], values[keep]))
                separation, direction = (auroc, "higher") if auroc >= 0.5 else (1.0 - auroc, "lower")
                if np.isnan(choice[0]) or separation > choice[0]:
                    choice = (separation, name, direction)
            row.update({f"{modality}_auroc": choice[0], f"{modality}_feature": choice[1],
                        f"{modality}_direction": choice[2]})
            if not np.isnan(choice[0]) and (np.isnan(best[0]) or choice[0] > best[0]):
                best = (choice[0], modality, choice[1])
        row.update({"best_auroc": best[0], "best_modality": best[1], "best_feature": best[2]})
        rows.append(row)
    return pd.DataFrame(rows).set_index("code")


def separability_markdown(table: pd.DataFrame) -> str:
    """The separability table as Markdown: AUROC and feature per modality, best first column after the class."""
    def cell(row, modality):
        if pd.isna(row[f"{modality}_auroc"]):
            return "n/a"
        arrow = "↑" if row[f"{modality}_direction"] == "higher" else "↓"
        return f"{row[f'{modality}_auroc']:.2f} ({row[f'{modality}_feature']} {arrow})"

    modalities = list(HAND_FEATURES)
    lines = ["# How far one hand feature separates each class from the good runs", "",
             "AUROC of the best single hand feature per modality against the good runs, direction-free "
             "(max(AUROC, 1 - AUROC); ↑ = the class is higher, ↓ = lower; 0.5 = no separation, 1.00 = one "
             "threshold separates every run). Runs of every split. A class near 1.00 is easy for anything that "
             "sees that modality; one near 0.5 everywhere needs what a model learns beyond these numbers.", "",
             "| code | class | runs | best | " + " | ".join(modalities) + " |",
             "|" + "---|" * (4 + len(modalities))]
    for code, row in table.iterrows():
        best = "n/a" if pd.isna(row["best_auroc"]) else f"{row['best_auroc']:.2f} ({row['best_modality']})"
        lines.append(f"| {code} | {row['class']} | {row['runs']} | {best} | "
                     + " | ".join(cell(row, m) for m in modalities) + " |")
    lines += ["", "Features: " + "; ".join(f"`{name}` = {what}" for names in HAND_FEATURES.values()
                                          for name, what in names.items()) + "."]
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
    """Write ``counts.csv``, ``counts.md``, ``separability.csv``, ``separability.md`` and ``modalities.png``
    below ``out_dir``; return the counts and the separability table."""
    out_dir = Path(out_dir)
    manifest = read_manifest(manifest_csv)
    table = count_table(manifest)
    with atomic_path(out_dir / "counts.csv") as tmp:
        table.to_csv(tmp, lineterminator="\n")
    write_text(out_dir / "counts.md", "# Runs per class and split\n\n" + markdown_table(table))
    separability = separability_table(feature_table(manifest, data_root))
    with atomic_path(out_dir / "separability.csv") as tmp:
        separability.to_csv(tmp, lineterminator="\n", float_format="%.4f")
    write_text(out_dir / "separability.md", separability_markdown(separability))
    sizes = {k: v for k, v in (preprocess or {}).items() if k in PREPROCESS_KEYS}
    sizes["audio_type"] = "mel"
    dataset = WeldingDataset(example_rows(manifest), data_root, "test", allow_missing_images=True, **sizes)
    samples = [dataset[i] for i in range(len(dataset))]
    titles = [f"{'GOOD' if r.label == 0 else 'DEFECT'}: {r.class_name}\n{r.configuration}/\n{r.run_id}"
              for r in dataset.runs]
    plot_modalities(samples, out_dir / "modalities.png", titles)
    return {"counts": {code: row.drop("class").to_dict() for code, row in table.iterrows()},
            "separability": separability.reset_index().to_dict("records")}


def add_cli_arguments(parser) -> None:
    parser.add_argument("--manifest", required=True, help="manifest CSV")
    parser.add_argument("--data-root", required=True, help="folder holding the runs")
    parser.add_argument("--out", required=True, help="folder for counts.csv/.md, separability.csv/.md, modalities.png")
    parser.add_argument("--config", default=None, help="config.yaml whose preprocess sizes to use (default: schema defaults)")


def cli(args) -> int:
    from weldfilm.config import load_config, prepare

    cfg = load_config(args.config) if args.config else prepare({})
    write_dataset_card(args.manifest, args.data_root, args.out, cfg["preprocess"])
    print(f"wrote dataset card to {args.out}")
    return 0
