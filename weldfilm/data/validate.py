"""Open every file of every run of a manifest and report what is missing or broken.

``validate_runs`` runs each modality reader (the same code the dataset uses, at the configured
preprocessing sizes) on every run, writes a JSON report, and then raises ``DataError`` listing the
unusable runs so that the workflow stops; the user can list them in ``data.exclude_runs``.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from weldfilm.data import readers
from weldfilm.data.dataset import PREPROCESS_KEYS
from weldfilm.data.layout import run_ref
from weldfilm.data.manifest import read_manifest
from weldfilm.errors import DataError, WeldfilmError
from weldfilm.io import provenance, write_json
from weldfilm.training.progress import progress

DEFAULT_PREPROCESS = {"video_frames": 32, "frame_size": 64, "image_size": 224, "num_angles": 5, "audio_type": "mel",
                      "audio_sr": 16000, "audio_mel_bins": 64, "audio_frames": 256, "n_fft": 2048, "hop_length": 512,
                      "sensor_length": 256, "sensor_channels": 6}


def check_run(data_root, subdir: str, preprocess: dict, allow_missing_images: bool = False,
              method_audio: dict | None = None) -> dict:
    """``{"problems": {modality: message}, "notes": [...], "num_images": k}`` for one run.

    ``method_audio``: name -> audio settings (``weldfilm.config.method_audio_settings``) read besides
    ``preprocess``'s.
    """
    run = run_ref(subdir)
    folder = Path(data_root) / run.subdir
    if not folder.is_dir():
        return {"problems": {"run": f"run folder {folder} is missing"}, "notes": [], "num_images": 0}
    files, p = run.files(data_root), preprocess
    num_images = len(readers.list_images(files["images"]))
    checks = {
        "video": lambda: readers.read_video(run.subdir, files["avi"], p["video_frames"], p["frame_size"]),
        "audio": lambda: readers.read_audio(run.subdir, files["flac"], p["audio_type"], p["audio_sr"],
                                            p["audio_mel_bins"], p["audio_frames"], p["n_fft"], p["hop_length"], full_decode=True),
        "sensor": lambda: readers.read_sensor(run.subdir, files["csv"], p["sensor_length"], p["sensor_channels"]),
        # every photo is opened, not only the first num_angles
        "images": lambda: readers.read_images(run.subdir, files["images"], max(p["num_angles"], num_images),
                                              p["image_size"], allow_missing_images),
    }
    for name, audio in (method_audio or {}).items():
        settings = {**p, **audio}
        checks[f"audio ({name})"] = lambda a=settings: readers.read_audio(
            run.subdir, files["flac"], a["audio_type"], a["audio_sr"], a["audio_mel_bins"], a["audio_frames"],
            a["n_fft"], a["hop_length"])
    problems = {}
    for modality, check in checks.items():
        try:
            check()
        except WeldfilmError as exc:
            problems[modality] = str(exc)
    notes = []
    if "images" not in problems and num_images < p["num_angles"]:
        notes.append(f"{num_images} post-weld image(s), fewer than num_angles={p['num_angles']} (zero-padded)")
    return {"problems": problems, "notes": notes, "num_images": num_images}


def _one_thread_each() -> None:
    """A validate worker decodes on one thread: the job's threads are its workers (the job's thread limit,
    inherited through the environment, would otherwise be taken by every worker)."""
    import cv2
    from threadpoolctl import threadpool_limits

    cv2.setNumThreads(1)
    threadpool_limits(limits=1)


def validate_runs(data_root, manifest_csv, out_json, preprocess: dict | None = None,
                  allow_missing_images: bool = False, method_audio: dict | None = None, workers: int = 1) -> dict:
    """Check every run of ``manifest_csv``; write ``out_json``; raise DataError if any run is unusable.

    ``method_audio``: extra audio settings to read every run with (``weldfilm.config.method_audio_settings``).
    ``workers``: processes checking runs side by side (1: in this process); the report is the same.
    """
    sizes = {**DEFAULT_PREPROCESS, **{k: v for k, v in (preprocess or {}).items() if k in PREPROCESS_KEYS}}
    table = read_manifest(manifest_csv)
    subdirs = list(table["SUBDIRS"])
    check = partial(check_run, data_root, preprocess=sizes, allow_missing_images=allow_missing_images,
                    method_audio=method_audio)
    if int(workers) > 1 and len(subdirs) > 1:
        with ProcessPoolExecutor(max_workers=int(workers), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_one_thread_each) as pool:
            chunk = max(1, len(subdirs) // (8 * int(workers)))
            results = list(progress(pool.map(check, subdirs, chunksize=chunk), "validate", total=len(subdirs), unit="run"))
    else:
        results = [check(subdir) for subdir in progress(subdirs, "validate", unit="run")]
    runs, bad = {}, []
    for subdir, result in zip(subdirs, results):
        if result["problems"] or result["notes"]:
            runs[subdir] = result
        if result["problems"]:
            bad.append(subdir)
    report = {
        "data_root": str(data_root),
        "manifest": str(manifest_csv),
        "preprocess": sizes,
        "method_audio": method_audio or {},
        "allow_missing_images": allow_missing_images,
        "n_runs": int(len(table)),
        "n_unusable": len(bad),
        "unusable_runs": bad,
        "runs": runs,
        "provenance": provenance(),
    }
    write_json(out_json, report)
    if bad:
        shown = "\n  ".join(problem for s in bad[:20] for problem in runs[s]["problems"].values())
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DataError(f"{len(bad)} of {len(table)} run(s) are unusable (details in {out_json}):\n  {shown}{more}\n"
                        "To go on without them, add their SUBDIRS to data.exclude_runs in config.yaml "
                        "(or pass --exclude to `weldfilm manifest`) and re-run.")
    return report


def add_cli_arguments(parser) -> None:
    parser.add_argument("--data-root", required=True, help="folder holding the runs")
    parser.add_argument("--manifest", required=True, help="manifest CSV written by `weldfilm manifest`")
    parser.add_argument("--out", required=True, help="JSON report to write")
    parser.add_argument("--config", default=None, help="config.yaml whose preprocess sizes to use (default: schema defaults)")
    parser.add_argument("--allow-missing-images", action="store_true", help="accept runs without post-weld images")
    parser.add_argument("--workers", type=int, default=1, help="processes checking runs side by side (1: in-process)")


def cli(args) -> int:
    from weldfilm.config import load_config, method_audio_settings

    cfg = load_config(args.config) if args.config else None
    report = validate_runs(args.data_root, args.manifest, args.out, cfg["preprocess"] if cfg else None,
                           args.allow_missing_images, method_audio_settings(cfg) if cfg else None, workers=args.workers)
    print(f"wrote {args.out}: all {report['n_runs']} runs usable")
    return 0
