"""The bad-input matrix: each broken input against the data layer, config schema, backbones and CLI.

Every row names the input, the call that meets it and the message a user must see (the run and the
file, or the config key, and what is wrong). Rows are listed in the module so the table reads as one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from weldfilm import cli
from weldfilm.config import prepare
from weldfilm.data.layout import discover_runs
from weldfilm.data.manifest import build_manifest, read_manifest
from weldfilm.data.readers import read_audio, read_images, read_sensor, read_video
from weldfilm.errors import BackboneError, CheckpointError, ConfigError, DataError
from weldfilm.io import read_json


def one_run(tiny_data_root: Path, tmp_path: Path, code: str = "00") -> tuple[Path, str, str]:
    """Copy the first run of class ``code`` into ``tmp_path/root``; return (root, SUBDIRS, run id)."""
    run = next(r for r in discover_runs(tiny_data_root) if r.run_id.endswith(code))
    root = tmp_path / "root"
    shutil.copytree(tiny_data_root / run.subdir, root / run.subdir)
    return root, run.subdir, run.run_id


def files(root, subdir, run_id):
    folder = Path(root) / subdir
    return {"csv": folder / f"{run_id}.csv", "flac": folder / f"{run_id}.flac", "avi": folder / f"{run_id}.avi",
            "images": folder / "images"}


# --- how each row breaks its input and what it then calls -----------------------------------------------
def missing_modality(root, subdir, run_id):
    files(root, subdir, run_id)["flac"].unlink()
    return lambda: read_audio(subdir, files(root, subdir, run_id)["flac"])


def zero_byte_avi(root, subdir, run_id):
    files(root, subdir, run_id)["avi"].write_bytes(b"")
    return lambda: read_video(subdir, files(root, subdir, run_id)["avi"], num_frames=4, frame_size=32)


def truncated_flac(root, subdir, run_id):
    flac = files(root, subdir, run_id)["flac"]
    flac.write_bytes(flac.read_bytes()[: flac.stat().st_size // 3])
    return lambda: read_audio(subdir, flac, full_decode=True)


def non_numeric_channel(root, subdir, run_id):
    csv = files(root, subdir, run_id)["csv"]
    table = pd.read_csv(csv)
    table["Feed"] = "n/a"
    table.to_csv(csv, index=False)
    return lambda: read_sensor(subdir, csv)


def missing_channel_column(root, subdir, run_id):
    csv = files(root, subdir, run_id)["csv"]
    pd.read_csv(csv).drop(columns=["Secondary Weld Voltage"]).to_csv(csv, index=False)
    return lambda: read_sensor(subdir, csv)


def empty_images(root, subdir, run_id):
    folder = files(root, subdir, run_id)["images"]
    shutil.rmtree(folder)
    folder.mkdir()
    return lambda: read_images(subdir, folder, num_angles=5, image_size=32)


def unknown_class_code(root, subdir, run_id):
    (root / "some_config" / "11-18-22-0001-42").mkdir(parents=True)
    return lambda: discover_runs(root)


def manifest_naming_missing_run(root, subdir, run_id):
    paper = root.parent / "paper_manifest.csv"
    pd.DataFrame({"SUBDIRS": [subdir, "gone_config/11-18-22-0999-03"], "SPLIT": ["TRAIN", "TEST"],
                  "CATEGORY": ["", ""]}).to_csv(paper, index=False)
    return lambda: build_manifest(root, root.parent / "manifest.csv", paper_manifest=paper)


def wrong_split_name(root, subdir, run_id):
    build_manifest(root, root.parent / "manifest.csv")
    table = pd.read_csv(root.parent / "manifest.csv")
    table["SPLIT"] = "TRIAN"
    table.to_csv(root.parent / "manifest.csv", index=False)
    return lambda: read_manifest(root.parent / "manifest.csv")


def negative_size(root, subdir, run_id):
    return lambda: prepare({"preprocess": {"image_size": -224}})


def absurd_size(root, subdir, run_id):
    return lambda: prepare({"preprocess": {"video_frames": 10**9}})


def backbone_without_weights(root, subdir, run_id):
    from transformers import ViTConfig, ViTModel

    from weldfilm.models.backbones import load_pretrained

    folder = root.parent / "vit_no_weights"
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(folder)
    return lambda: load_pretrained(folder, ViTModel)


def tokenizer_vocab_mismatch(root, subdir, run_id):
    from transformers import PreTrainedTokenizerFast

    from weldfilm.models.backbones import load_clip_tokenizer
    from weldfilm.models.tiny import build_clip_tokenizer

    folder = root.parent / "clip_tok"
    tokenizer = build_clip_tokenizer(max_merges=16)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>").save_pretrained(folder)
    return lambda: load_clip_tokenizer(folder, vocab_size=49408)


def corrupt_checkpoint(root, subdir, run_id):
    from weldfilm.training.checkpoints import load_checkpoint

    path = root.parent / "best.pt"
    path.write_bytes(b"PK\x03\x04 not a checkpoint")
    return lambda: load_checkpoint(path)


def corrupt_results_file(root, subdir, run_id):
    path = root.parent / "metrics.json"
    path.write_text('{"i_auroc": 0.9')
    return lambda: read_json(path, "metrics file")


MATRIX = [
    # input,                            break it,                     error,           message must match
    ("missing modality (no .flac)",     missing_modality,             DataError,       r"\.flac"),
    ("zero-byte AVI",                   zero_byte_avi,                DataError,       r"\.avi"),
    ("truncated FLAC",                  truncated_flac,               DataError,       r"\.flac"),
    ("CSV with non-numeric channel",    non_numeric_channel,          DataError,       r"Feed"),
    ("CSV missing a channel column",    missing_channel_column,       DataError,       r"Secondary Weld Voltage"),
    ("empty images/",                   empty_images,                 DataError,       r"images"),
    ("unknown class code",              unknown_class_code,           DataError,       r"11-18-22-0001-42.*class code 42"),
    ("manifest naming a missing run",   manifest_naming_missing_run,  DataError,       r"gone_config/11-18-22-0999-03"),
    ("wrong split names",               wrong_split_name,             (ConfigError, DataError), r"TRIAN"),
    ("negative size in the config",     negative_size,                ConfigError,     r"preprocess\.image_size"),
    ("absurd size in the config",       absurd_size,                  ConfigError,     r"preprocess\.video_frames"),
    ("backbone directory without weights", backbone_without_weights,  BackboneError,   r"vit_no_weights"),
    ("CLIP tokenizer vocab != model",   tokenizer_vocab_mismatch,     BackboneError,   r"vocab"),
    ("corrupt checkpoint",              corrupt_checkpoint,           CheckpointError, r"best\.pt"),
    ("corrupt results file",            corrupt_results_file,         CheckpointError, r"metrics\.json"),
]


@pytest.mark.parametrize("name, breaker, error, message", MATRIX, ids=[row[0] for row in MATRIX])
def test_bad_input_gives_a_clear_error(name, breaker, error, message, tiny_data_root, tmp_path):
    root, subdir, run_id = one_run(tiny_data_root, tmp_path)
    call = breaker(root, subdir, run_id)
    with pytest.raises(error, match=message) as caught:
        call()
    if error is DataError and breaker not in (unknown_class_code, manifest_naming_missing_run):
        assert subdir in str(caught.value) or run_id in str(caught.value), "the message names the run"


def test_duplicate_run_ids_in_two_configurations_are_both_kept(tiny_data_root, tmp_path):
    root, subdir, run_id = one_run(tiny_data_root, tmp_path)
    shutil.copytree(root / subdir, root / "another_config" / run_id)
    runs = discover_runs(root)
    assert [r.run_id for r in runs] == [run_id, run_id]
    assert len({r.subdir for r in runs}) == 2


def test_cli_validate_fails_with_the_broken_run_listed(tiny_data_root, tmp_path, capsys):
    root, subdir, run_id = one_run(tiny_data_root, tmp_path)
    build_manifest(root, tmp_path / "manifest.csv")
    files(root, subdir, run_id)["avi"].write_bytes(b"")
    rc = cli.main(["validate", "--data-root", str(root), "--manifest", str(tmp_path / "manifest.csv"),
                   "--out", str(tmp_path / "report.json")])
    assert rc != 0
    assert subdir in capsys.readouterr().err
    assert (tmp_path / "report.json").is_file()


# --- paper shapes (profile paper_shapes): short audio and fewer photos than views --------------------------
def paper_shapes_config() -> dict:
    import yaml

    from weldfilm.config import DEFAULT_CONFIG

    return prepare({**yaml.safe_load(DEFAULT_CONFIG.read_text()), "profile": "paper_shapes"})


def write_short_flac(path: Path, seconds: float, sr: int = 192000) -> None:
    import numpy as np
    import soundfile

    samples = int(seconds * sr)
    soundfile.write(str(path), 0.1 * np.sin(np.arange(samples) / 20.0), sr, format="FLAC")


@pytest.mark.parametrize("reader", ["late_fusion", "preprocess"])
def test_audio_shorter_than_one_stft_window_is_a_clear_error_at_paper_shapes(reader, tiny_data_root, tmp_path):
    """A 0.05 s FLAC at 192 kHz has no complete n_fft 16384 window (85 ms), nor a mel window (2048 at 16 kHz):
    the reader stops with the run, the file and what to do (documented choice: no zero-padded frames)."""
    from weldfilm.config import method_audio_settings

    cfg = paper_shapes_config()
    root, subdir, run_id = one_run(tiny_data_root, tmp_path)
    flac = files(root, subdir, run_id)["flac"]
    write_short_flac(flac, 0.05)
    audio = {**cfg["preprocess"], **(method_audio_settings(cfg)[reader] if reader == "late_fusion" else {})}
    with pytest.raises(DataError, match=rf"run {subdir}: .*{run_id}\.flac: audio is too short: \d+ samples \(0\.050 s\)") as caught:
        read_audio(subdir, flac, audio["audio_type"], audio["audio_sr"], audio["audio_mel_bins"], audio["audio_frames"],
                   audio["n_fft"], audio["hop_length"])
    assert f"n_fft {audio['n_fft']}" in str(caught.value) and "data.exclude_runs" in str(caught.value)
    # one window long is enough: a 0.1 s clip gives Late Fusion's full (1, 8193, 1024) STFT, zero-padded in time
    write_short_flac(flac, 0.1)
    if reader == "late_fusion":
        spec = read_audio(subdir, flac, "stft", audio["audio_sr"], 64, audio["audio_frames"], audio["n_fft"],
                          audio["hop_length"])
        assert spec.shape == (1, audio["n_fft"] // 2 + 1, audio["audio_frames"]) and spec[..., 3:].max() == 0


def test_validate_reads_late_fusion_audio_too_and_names_the_short_run(tiny_data_root, tmp_path):
    from weldfilm.config import method_audio_settings
    from weldfilm.data.validate import validate_runs

    cfg = paper_shapes_config()
    root, subdir, run_id = one_run(tiny_data_root, tmp_path)
    build_manifest(root, tmp_path / "manifest.csv")
    write_short_flac(files(root, subdir, run_id)["flac"], 0.05)
    with pytest.raises(DataError, match=rf"1 of 1 run\(s\) are unusable.*\n  run {subdir}: .*\.flac: audio is too short"):
        validate_runs(root, tmp_path / "manifest.csv", tmp_path / "validation.json", cfg["preprocess"],
                      method_audio=method_audio_settings(cfg))
    problems = read_json(tmp_path / "validation.json")["runs"][subdir]["problems"]
    assert set(problems) == {"audio", "audio (late_fusion)"}  # the mel path and Late Fusion's 192 kHz STFT
    assert "n_fft 16384" in problems["audio (late_fusion)"]
    assert method_audio_settings({**cfg, "methods": ["causal_film"]}) == {}  # read only when Late Fusion runs


@pytest.mark.slow
def test_fewer_photos_than_views_at_paper_shapes_is_a_recorded_choice(tiny_data_root, tmp_path):
    """2 photos for num_angles 5: the reader zero-pads and counts 2, validate records it; Causal-FiLM pools the
    2 real views (view_padding exclude) or all 5 (include, the authors' code); Dinomaly scores the 2 real
    photos only; M3DM reads the first photo only. A run without any photo is an error naming the run."""
    import torch

    from weldfilm.data.validate import validate_runs
    from weldfilm.methods.causal_film.model import CausalFiLMModel
    from weldfilm.methods.causal_film.encoders import view_mask

    cfg = paper_shapes_config()
    pre = cfg["preprocess"]
    root, subdir, run_id = one_run(tiny_data_root, tmp_path)
    for photo in sorted(files(root, subdir, run_id)["images"].iterdir())[2:]:
        photo.unlink()
    images, count = read_images(subdir, files(root, subdir, run_id)["images"], pre["num_angles"], pre["image_size"])
    assert images.shape == (pre["num_angles"], 3, pre["image_size"], pre["image_size"]) and count == 2
    assert images[:2].max() > 0 and images[2:].max() == 0
    build_manifest(root, tmp_path / "manifest.csv")
    report = validate_runs(root, tmp_path / "manifest.csv", tmp_path / "validation.json", pre)
    assert report["runs"][subdir]["notes"] == [f"2 post-weld image(s), fewer than num_angles={pre['num_angles']} "
                                               "(zero-padded)"]

    # Causal-FiLM at the paper's d_model on paper-shaped DINOv3 tokens (5 views x 201 tokens)
    torch.manual_seed(0)
    dims = {"video": 32, "audio": 32, "image": 32, "clip": None, "image_prefix_tokens": 5}
    features = {"video_tokens": torch.randn(2, 256, 32), "audio_tokens": torch.randn(2, 659, 32),
                "image_tokens": torch.randn(2, pre["num_angles"], 2, 201, 32), "num_images": torch.tensor([2, 5]),
                "sensor": torch.randn(2, pre["sensor_length"], 6), "sample_id": [subdir, "other"]}
    changed = {**features, "image_tokens": features["image_tokens"].clone()}
    changed["image_tokens"][0, 2:] += 5.0  # what the padded views of the 2-photo run hold
    for padding, padded_views_matter in (("exclude", False), ("include", True)):
        model = CausalFiLMModel({**cfg["causal_film"], "view_padding": padding}, dims).eval()
        with torch.no_grad():
            first, second = model.anomaly_scores(features), model.anomaly_scores(changed)
        assert torch.isfinite(first).all()
        assert bool(torch.isclose(first[0], second[0])) is not padded_views_matter
        assert torch.isclose(first[1], second[1])  # the 5-photo run is untouched
    with pytest.raises(DataError, match=rf"\['{subdir}'\] have no post-weld image.*data\.exclude_runs"):
        view_mask(torch.tensor([0, 5]), pre["num_angles"], [subdir, "other"])

    # Dinomaly at 448 -> 392 px with the paper's layer groups: only the 2 real photos are samples
    from weldfilm.methods.dinomaly.method import DinomalyTrainable
    from weldfilm.models.sizes import build_random_backbone

    section = cfg["dinomaly"]
    head = DinomalyTrainable(build_random_backbone("dinov2_reg", "paper_shapes"), section).eval()
    photos = torch.rand(2, pre["num_angles"], 3, section["resize"], section["resize"])
    batch = {"post_weld_images": photos, "num_images": torch.tensor([2, 5]), "sample_id": [subdir, "other"]}
    noisy = {**batch, "post_weld_images": photos.clone()}
    noisy["post_weld_images"][0, 2:] = 1.0
    _, run_index = head.images_of(batch)
    assert run_index.tolist() == [0, 0, 1, 1, 1, 1, 1]
    with torch.no_grad():
        assert torch.equal(head.anomaly_scores(batch), head.anomaly_scores(noisy))
    with pytest.raises(DataError, match=rf"without post-weld images.*{subdir}"):
        head.images_of({**batch, "num_images": torch.tensor([0, 5])})
