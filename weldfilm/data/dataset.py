"""``WeldingDataset``: one split of the manifest as the data contract of docs/ARCHITECTURE.md.

``dataset[i]`` is a dict ``video (T_v,3,H,W)``, ``post_weld_images (N,3,H,W)`` + ``num_images``,
``audio (1,F,T_a)``, ``sensor (T_s,C_s)`` (float32 tensors; only the requested ``modalities`` are
decoded and returned), ``label``, ``class_label`` and ``sample_id`` (SUBDIRS). Sizes default to the
paper's effective values (T_v=32 at 64 px, N=5 at 224 px, mel 64 x 256, sensor 256 x 6).

Augmentation (section 8.6) runs only with ``augment=True`` on the TRAIN split; the generator of
sample ``i`` is seeded by ``(seed, epoch, i)``, so the same seed gives the same sample whatever the
worker or order. ``epoch`` is 0 unless the trainer calls ``set_epoch`` to vary it per epoch.

``store`` (``{modality: weldfilm.data.store.StoredKind}``, attached by ``dataset_from_config`` when the
decoded-input store holds a current file of the split) serves those modalities from a memory map
instead of decoding (bit-identical values); augmentation is applied to the arrays either way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from weldfilm.data import augment as aug
from weldfilm.data import readers
from weldfilm.data.layout import run_ref
from weldfilm.data.manifest import SPLITS, read_manifest
from weldfilm.data.store import PREPROCESS_KEYS, open_store
from weldfilm.errors import ConfigError, DataError
from weldfilm.paths import manifest_path

MODALITIES = ("video", "post_weld_images", "audio", "sensor")


class WeldingDataset:
    """The runs of one manifest split, read from ``data_root`` with the given preprocessing sizes.

    A map-style dataset for ``torch.utils.data.DataLoader``; importing it imports no torch (the input-store
    build and validate decode without it), its items are torch tensors."""

    def __init__(self, manifest, data_root, split: str, *, video_frames: int = 32, frame_size: int = 64,
                 image_size: int = 224, num_angles: int = 5, audio_type: str = "mel", audio_sr: int = 16000,
                 audio_mel_bins: int = 64, audio_frames: int = 256, n_fft: int = 2048, hop_length: int = 512,
                 sensor_length: int = 256, sensor_channels: int = 6, modalities=None, augment: bool = False,
                 seed: int = 0, allow_missing_images: bool = False, exclude_runs=(),
                 augment_params: dict | None = None, store: dict | None = None):
        self.split = str(split).upper()
        if self.split not in SPLITS:
            raise ConfigError(f"split must be one of {list(SPLITS)} (any case), got '{split}'")
        if augment and self.split != "TRAIN":
            raise ConfigError(f"augment=True is only for the TRAIN split, not {self.split}")
        if audio_type not in ("mel", "stft"):
            raise ConfigError(f"preprocess.audio_type must be 'mel' or 'stft', got '{audio_type}'")
        self.modalities = tuple(MODALITIES if modalities is None else modalities)
        unknown = sorted(set(self.modalities) - set(MODALITIES))
        if unknown:
            raise ConfigError(f"unknown modalities {unknown}; known: {list(MODALITIES)}")
        self.data_root = Path(data_root)
        table = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest)
        excluded = {str(s).strip().strip("/") for s in exclude_runs}
        table = table[(table["SPLIT"].str.upper() == self.split) & ~table["SUBDIRS"].isin(excluded)]
        self.runs = [run_ref(s) for s in table["SUBDIRS"]]
        missing = [r.subdir for r in self.runs if not (self.data_root / r.subdir).is_dir()]
        if missing:
            raise DataError(f"manifest split {self.split} names {len(missing)} run folder(s) missing under "
                            f"{self.data_root}: {missing[:10]} (rebuild the manifest or list them in data.exclude_runs)")
        self.sizes = dict(video_frames=video_frames, frame_size=frame_size, image_size=image_size,
                          num_angles=num_angles, audio_type=audio_type, audio_sr=audio_sr,
                          audio_mel_bins=audio_mel_bins, audio_frames=audio_frames, n_fft=n_fft,
                          hop_length=hop_length, sensor_length=sensor_length, sensor_channels=sensor_channels)
        self.augment = bool(augment)
        self.augment_params = aug.merged_params(augment_params)
        self.seed = int(seed)
        self.epoch = 0
        self.allow_missing_images = allow_missing_images
        self.store = dict(store or {})  # modality -> StoredKind: read from the decoded-input store

    def __len__(self) -> int:
        return len(self.runs)

    @property
    def labels(self) -> np.ndarray:
        """Binary labels of the split, in order (0 good, 1 defect)."""
        return np.array([r.label for r in self.runs], dtype=np.int64)

    @property
    def sample_ids(self) -> list[str]:
        return [r.subdir for r in self.runs]

    def set_epoch(self, epoch: int) -> None:
        """Vary the augmentation per epoch (the default, epoch 0, repeats it every epoch)."""
        self.epoch = int(epoch)

    def read_arrays(self, index: int) -> dict:
        """The requested modalities of run ``index`` as numpy arrays (before augmentation): from the
        decoded-input store where it holds them, decoded from the run's files otherwise."""
        out = {}
        for modality in self.modalities:
            if modality in self.store:
                self.store[modality].read(index, out)
        missing = tuple(m for m in self.modalities if m not in self.store)
        if missing:
            out.update(self.decode_arrays(index, modalities=missing))
        return {key: out[key] for key in ("video", "post_weld_images", "num_images", "audio", "sensor") if key in out}

    def decode_arrays(self, index: int, uint8: bool = False, modalities=None) -> dict:
        """The ``modalities`` (default: all requested) of run ``index`` decoded from its files. ``uint8``:
        video frames and photos as the resized RGB pixels (what the decoded-input store keeps)."""
        run, s = self.runs[index], self.sizes
        wanted = self.modalities if modalities is None else modalities
        pixels = np.uint8 if uint8 else np.float32
        files = run.files(self.data_root)
        out = {}
        if "video" in wanted:
            out["video"] = readers.read_video(run.subdir, files["avi"], s["video_frames"], s["frame_size"], pixels)
        if "post_weld_images" in wanted:
            out["post_weld_images"], out["num_images"] = readers.read_images(
                run.subdir, files["images"], s["num_angles"], s["image_size"], self.allow_missing_images, pixels)
        if "audio" in wanted:
            out["audio"] = readers.read_audio(run.subdir, files["flac"], s["audio_type"], s["audio_sr"],
                                              s["audio_mel_bins"], s["audio_frames"], s["n_fft"], s["hop_length"])
        if "sensor" in wanted:
            out["sensor"] = readers.read_sensor(run.subdir, files["csv"], s["sensor_length"], s["sensor_channels"])
        return out

    def augment_arrays(self, arrays: dict, index: int) -> dict:
        """Section-8.6 augmentation of one sample, seeded by (seed, epoch, index)."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        p = self.augment_params
        out = dict(arrays)
        if "video" in out:
            out["video"] = aug.augment_video(rng, out["video"], p["video"])
        if "post_weld_images" in out:
            out["post_weld_images"] = aug.augment_images(rng, out["post_weld_images"], p["images"], out["num_images"])
        if "audio" in out:
            out["audio"] = aug.augment_audio(rng, out["audio"], p["audio"])
        if "sensor" in out:
            out["sensor"] = aug.augment_sensor(rng, out["sensor"], p["sensor"])
        return out

    def __getitem__(self, index: int) -> dict:
        import torch

        if not 0 <= index < len(self.runs):
            raise IndexError(index)
        arrays = self.read_arrays(index)
        if self.augment:
            arrays = self.augment_arrays(arrays, index)
        run = self.runs[index]
        item = {key: torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else int(value)
                for key, value in arrays.items()}
        item.update(label=run.label, class_label=run.class_code, sample_id=run.subdir)
        return item


def collate_batch(items: list[dict]) -> dict:
    """Stack tensors (and ints into int64 tensors) of a list of samples; ``sample_id`` stays a list."""
    import torch

    if not items:
        raise ValueError("collate_batch needs at least one sample")
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key == "sample_id":
            batch[key] = list(values)
        elif isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        else:
            batch[key] = torch.tensor(values, dtype=torch.int64)
    return batch


def dataset_from_config(cfg: dict, split: str, augment: bool | None = None, modalities=None,
                        store: bool | None = None, **overrides) -> WeldingDataset:
    """A ``WeldingDataset`` from a validated config.

    Manifest: ``overrides['manifest']`` or ``<results>/data/manifest.csv``. ``augment=None`` means
    ``train.use_augmentations`` on the TRAIN split and off elsewhere. Other ``overrides`` replace
    preprocessing sizes (e.g. Late Fusion's ``audio_type="stft"``) or ``seed``. ``store=None``: read
    the modalities the decoded-input store holds current files of (``inputs.store``; weldfilm/data/store.py),
    decode the rest; ``False``: decode everything.
    """
    manifest = overrides.pop("manifest") if "manifest" in overrides else manifest_path(cfg)
    if augment is None:
        augment = bool(cfg.get("train", {}).get("use_augmentations", False)) and str(split).upper() == "TRAIN"
    sizes = {key: cfg["preprocess"][key] for key in PREPROCESS_KEYS if key in cfg["preprocess"]}
    seed = overrides.pop("seed", (cfg.get("run") or {}).get("seed", 0))
    unknown = sorted(set(overrides) - set(PREPROCESS_KEYS))
    if unknown:
        raise ConfigError(f"dataset_from_config: unknown override(s) {unknown}; known: {list(PREPROCESS_KEYS)}")
    sizes.update(overrides)
    data = cfg["data"]
    dataset = WeldingDataset(manifest, data["root"], split, modalities=modalities, augment=augment, seed=seed,
                             allow_missing_images=data.get("allow_missing_images", False),
                             exclude_runs=data.get("exclude_runs", ()), augment_params=cfg.get("augment"), **sizes)
    if store is not False:
        dataset.store = open_store(cfg, dataset.split.lower(), dataset.modalities, dataset.sizes, dataset.sample_ids)
    return dataset
