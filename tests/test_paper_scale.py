"""benchmarks/paper_scale.py: its FLOP counts against independent counts, and its cost model against the config.

The counting path (weldfilm's own calls: FrozenBackbones, M3DM's extractor, Dinomaly's head) is checked
against FlopCounterMode on the bare transformers models with the same inputs, and DINOv3 also against a
hand count, on models of the paper classes with the paper geometry at tiny width (``paper_shapes``).
The cost model is checked on the paper profile with stated per-sample figures: the job counts come from
the config, and its switches (augmentation, input caching, workers, precision) change what it projects
the way the code behaves.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from weldfilm.config import load_config
from weldfilm.models.backbones import FrozenBackbones, resize_mel_for_ast
from weldfilm.models.sizes import build_random_backbone

SPEC = importlib.util.spec_from_file_location(
    "paper_scale", Path(__file__).resolve().parents[1] / "benchmarks" / "paper_scale.py")
ps = importlib.util.module_from_spec(SPEC)
sys.modules["paper_scale"] = ps
SPEC.loader.exec_module(ps)

PRE = {"video_frames": 4, "frame_size": 32, "image_size": 64, "num_angles": 2, "audio_mel_bins": 64,
       "audio_frames": 32, "sensor_length": 16, "sensor_channels": 6}
SHAPES = {"frame_size": 32, "video_frames": 4, "image_size": 64, "mel_bins": 64, "audio_frames": 32}


pytestmark = pytest.mark.slow  # paper-shape backbones and the cost model (~5-15 s each)

def _sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return 4 * math.prod(query_shape[:-1]) * key_shape[-2] * query_shape[-1]  # Q K^T and A V


def independent(fn) -> int:
    """FlopCounterMode on the bare call; attention on the CPU (no torch formula) counted as 4 * B * H * L * S * E."""
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        with torch.no_grad():
            fn()
    return counter.get_total_flops()


def close(a: float, b: float, tolerance: float = 0.10) -> bool:
    return abs(a - b) <= tolerance * max(abs(a), abs(b))


@pytest.fixture(scope="module")
def frozen(tmp_path_factory):
    nowhere = tmp_path_factory.mktemp("none")
    models = {name: build_random_backbone(name, "paper_shapes", **SHAPES) for name in ("vjepa2", "ast", "dinov3")}
    directories = {key: str(nowhere) for key in ("video", "audio", "image", "clip")}
    return FrozenBackbones(models["vjepa2"], models["ast"], models["dinov3"], None, None, directories, PRE,
                           [20, 31], "cpu")


def test_backbone_flops_match_independent_counts(frozen):
    torch.manual_seed(0)
    batch = {"video": torch.rand(2, PRE["video_frames"], 3, 32, 32),
             "audio": torch.randn(2, 1, PRE["audio_mel_bins"], PRE["audio_frames"]),
             "post_weld_images": torch.rand(2, PRE["num_angles"], 3, 64, 64)}
    audio_config = frozen.audio_model.config
    bare = {
        "vjepa2": lambda: frozen.video_model(pixel_values_videos=batch["video"], skip_predictor=True),
        "ast": lambda: frozen.audio_model(input_values=resize_mel_for_ast(
            batch["audio"], PRE["audio_mel_bins"], audio_config.max_length, audio_config.num_mel_bins)),
        "dinov3": lambda: frozen.image_model(pixel_values=batch["post_weld_images"].flatten(0, 1),
                                             output_hidden_states=True),
    }
    for name, call in bare.items():
        ours = ps.count_flops(ps.backbone_call(frozen, name), batch)[0]
        theirs = independent(call)
        assert ours > 0 and close(ours, theirs), (name, ours, theirs)
    # DINOv3 by hand: patch embedding + per layer QKV/out projections, (gated) MLP and attention matmuls
    c = frozen.image_model.config
    views = 2 * PRE["num_angles"]
    patches = (64 // c.patch_size) ** 2
    tokens = patches + 1 + c.num_register_tokens
    mlp = (3 if c.use_gated_mlp else 2) * c.hidden_size * c.intermediate_size
    per_layer = 2 * tokens * (4 * c.hidden_size ** 2 + mlp) + 4 * tokens ** 2 * c.hidden_size
    hand = views * (2 * patches * 3 * c.patch_size ** 2 * c.hidden_size + c.num_hidden_layers * per_layer)
    ours = ps.count_flops(ps.backbone_call(frozen, "dinov3"), batch)[0]
    assert close(ours, hand), (ours, hand)


def test_m3dm_and_dinomaly_encoder_flops_match_independent_counts():
    from weldfilm.methods.dinomaly.method import DinomalyTrainable
    from weldfilm.methods.m3dm.method import M3DMFeatures
    from weldfilm.methods.m3dm.point import PointTransformer

    torch.manual_seed(0)
    rgb = build_random_backbone("dino_vitb8", "paper_shapes")
    extractor = M3DMFeatures(rgb, PointTransformer(32, 2, 2, 16, 32, (1,)), 64, rgb_final_norm=True)
    images, clouds = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 16, 16)
    total, rgb_flops = ps.m3dm_extract_flops(extractor, images, clouds)
    normalised = (images - extractor.mean) / extractor.std
    theirs = independent(lambda: rgb(pixel_values=normalised, interpolate_pos_encoding=True))
    assert close(rgb_flops, theirs), (rgb_flops, theirs)
    assert total > rgb_flops  # the point transformer is counted too

    encoder = build_random_backbone("dinov2_reg", "paper_shapes")
    section = {**load_config(None)["dinomaly"], "layer_groups": [[2, 3, 4, 5], [6, 7, 8, 9]], "decoder_depth": 2,
               "crop_size": 56, "dropout": 0.0}
    head = DinomalyTrainable(encoder, section)
    batch = {"post_weld_images": torch.rand(2, 3, 3, 64, 64), "num_images": torch.tensor([3, 2]),
             "sample_id": ["a", "b"]}
    _, encoder_flops, _ = ps.dinomaly_flops(head, batch, train=False)
    crops, _ = head.images_of(batch)
    theirs = independent(lambda: head.encoder(pixel_values=crops, output_hidden_states=True))
    assert close(encoder_flops, theirs), (encoder_flops, theirs)
    train_total, train_encoder, _ = ps.dinomaly_flops(head, batch, train=True)
    assert close(train_encoder, theirs) and train_total > train_encoder  # frozen: forward only, trainable part added


# ------------------------------------------------------------------------------------------------- cost model
def paper_config(tmp_path, **changes):
    """The paper profile with ``changes`` (dotted keys) applied to every run: protocol overrides of the same
    keys are dropped. Frozen encoders in fp32, no TF32 and no encoder caches unless ``changes`` say so."""
    cfg = ps.load_benchmark_config(None, "paper", False, tmp_path)
    base = {"train.backbone_precision": "fp32", "train.allow_tf32": False, "train.cache_inputs": False,
            "m3dm.encoder_cache": False, "dinomaly.encoder_cache": False, "inputs.store": False,
            "train.num_workers": 0}
    for dotted, value in {**base, **changes}.items():
        section, key = dotted.split(".")
        if key in cfg[section] or dotted in changes:  # precision/cache keys only where the schema has them
            cfg[section][key] = value
        for overrides in cfg["protocols"].values():
            overrides.pop(dotted, None)
    return cfg


def stated_measurement(cfg) -> "ps.Measured":
    """Round per-sample figures (GFLOP, MB, samples/s) for every key the cost model reads."""
    m = ps.Measured(runs=1)
    gflop = {"vjepa2": 160, "ast": 130, "dinov3": 1700, "clip": 0.4, "dino_vitb8": 150, "dinov2_reg": 650}
    for name, value in gflop.items():
        m.backbones[name] = {"gflop_per_sample": value, "cache_mb_per_sample": 1.0, "cpu_s_per_sample": 1.0,
                             "params": 1e8, "param_bytes": 4e8, "tokens": [1], "class": name}
    for _, run in ps.all_runs(cfg):
        if run["run"]["method"] == "causal_film":
            m.cf_heads[ps.head_key(run)] = {"train_flop": 26e9, "score_flop": 6e9, "params": 1.8e7,
                                            "param_bytes": 7.2e7}
    for name, value in {"late_fusion.audio.train": 130e9, "late_fusion.audio.score": 45e9,
                        "late_fusion.video.train": 1e8, "late_fusion.video.score": 3e7, "m3dm.extract": 330e9, "m3dm.point": 180e9,
                        "m3dm.bank_score": 100e9, "dinomaly.train": 2100e9, "dinomaly.score": 1100e9}.items():
        m.components[name] = {"flop_per_sample": value, "cpu_s_per_sample": 1.0, "wall_s_per_sample": 1.0}
    m.loader = {"causal_film.aug_on": 4.0, "causal_film.aug_only": 40.0, "causal_film.aug_off": 5.0, "late_fusion.audio": 10.0,
                "late_fusion.video": 25.0, "m3dm": 100.0, "dinomaly": 20.0}
    # the decoded-input store: read 10x faster than decoding; each kind decoded at 2 runs/s, 1 MB a run
    m.loader.update({f"store.{key}": 10 * rate for key, rate in m.loader.items()})
    from weldfilm.data import store

    labels = set()
    for _, run in ps.all_runs(cfg):
        for method in ("causal_film", "late_fusion", "m3dm", "dinomaly"):
            labels |= {store.kind_label(spec) for spec in store.method_kinds(run, method)}
    m.loader.update({f"inputs.{label}": 2.0 for label in labels})
    m.sizes = {"import_rss": 5e8, "data_bytes_per_run": 4e7, "cf_input_bytes_per_sample": 5e6, "cf_cache_bytes_per_sample_extra": 1e4, "late_fusion.audio.param_bytes": 1e8,
               "late_fusion.video.param_bytes": 1e7, "late_fusion.audio.input_bytes": 3.4e7,
               "late_fusion.video.input_bytes": 1e6, "m3dm.patches_per_run": {"rgb": 784, "point": 3136},
               "m3dm.dims": {"rgb": 768, "point": 1152}, "m3dm.param_bytes": 4e8, "m3dm.jl_dim_paper": {"rgb": 100, "point": 120},
               "m3dm.coreset": {"rgb": {"flop_per_pick_item_dim": 2.0}, "point": {"flop_per_pick_item_dim": 2.0}},
               "dinomaly.param_bytes": 6e8, "dinomaly.trainable_param_bytes": 2.5e8, "dinomaly.images_per_run": 5,
               "dinomaly.tokens_per_image": 784, "dinomaly.dim": 768,
               **{f"store_bytes.{label}": 1e6 for label in labels}}
    from weldfilm.config import run_config

    ps.store_read_bytes({method: run_config(cfg, method, cfg["seeds"][0], "fair")
                         for method in ("causal_film", "late_fusion", "m3dm", "dinomaly")}, m)
    return m


def assumptions(**changes) -> Namespace:
    base = dict(gpu_tflops=1000.0, gpu_tf32_tflops=500.0, gpu_fp32_tflops=100.0, utilization=0.5, disk_gbps=1.0,
                job_start_s=0.0, train_normal=576, gpu_name="test GPU", quick=False, profile="paper",
                command="test", per_run_jobs=True, store_gbps=1e6)
    return Namespace(**{**base, **changes})


def test_cost_model_follows_the_config(tmp_path):
    cfg = paper_config(tmp_path, **{"train.use_augmentations": True})
    a = assumptions()
    m = stated_measurement(cfg)
    out = ps.project_dag(cfg, m, a)
    counts = out["counts"]
    seeds, protocols = len(cfg["seeds"]), len(cfg["protocols"])
    cf_runs = seeds * (protocols + len(cfg["ablations"]))
    assert counts["runs"] == len(cfg["methods"]) * seeds * protocols + len(cfg["ablations"]) * seeds
    stages = out["stages"]
    assert stages["causal_film.train"]["jobs"] == cf_runs and stages["features"]["jobs"] == 3
    # augmentation on: every epoch passes TRAIN through V-JEPA2 + AST + DINOv3 (here in fp32)
    epochs = cfg["train"]["epochs"]
    backbones = (160 + 130 + 1700) * 1e9
    expected = cf_runs * epochs * 576 * (backbones + 26e9) / 1e15
    assert stages["causal_film.train"]["pflop"] == pytest.approx(expected)
    assert stages["causal_film.train"]["precision"] == "fp32"
    assert stages["causal_film.train"]["gpu_hours_compute"] == pytest.approx(expected * 1e15 / (100e12 * 0.5) / 3600)
    # the loader runs in the training process (num_workers 0): decoding adds to the GPU time held
    load_h = cf_runs * epochs * 576 / 4.0 / 3600
    assert stages["causal_film.train"]["hours_held"] == pytest.approx(
        stages["causal_film.train"]["gpu_hours_compute"] + load_h, rel=0.01)
    # Dinomaly re-encodes its selection split every epoch; M3DM runs its extractor in every job
    dinomaly_jobs = seeds * protocols
    assert stages["dinomaly.select"]["pflop"] == pytest.approx(
        dinomaly_jobs * cfg["dinomaly"]["epochs"] * 1732 * 1100e9 / 1e15)
    m3dm_bank = min(cfg["m3dm"]["max_train_samples"] or 576, 576)
    assert stages["m3dm.extract"]["pflop"] == pytest.approx(dinomaly_jobs * m3dm_bank * 330e9 / 1e15)
    assert out["total_gpu_hours_held"] == pytest.approx(sum(s["hours_held"] for s in stages.values()))

    no_aug = ps.project_dag(paper_config(tmp_path, **{"train.use_augmentations": False}), m, a)["stages"]
    assert no_aug["causal_film.train"]["pflop"] == pytest.approx(cf_runs * epochs * 576 * 26e9 / 1e15)
    inputs = ps.project_dag(paper_config(tmp_path, **{"dinomaly.cache_inputs": True}), m, a)["stages"]
    assert inputs["dinomaly.train"]["hours_held"] < stages["dinomaly.train"]["hours_held"]
    assert inputs["dinomaly.train"]["pflop"] == pytest.approx(stages["dinomaly.train"]["pflop"])
    encoded = ps.project_dag(paper_config(tmp_path, **{"dinomaly.encoder_cache": True, "m3dm.encoder_cache": True}),
                             m, a)["stages"]
    assert encoded["dinomaly.select"]["pflop"] == pytest.approx(
        dinomaly_jobs * cfg["dinomaly"]["epochs"] * 1732 * (1100e9 - 650e9) / 1e15)
    assert encoded["dinomaly.encode"]["pflop"] == pytest.approx(3 * 1732 * 650e9 / 1e15, rel=0.25)  # TRAIN is 576
    # one extractor pass per split and point-transformer seed, over every run of the split
    assert encoded["m3dm.extract"]["pflop"] == pytest.approx(seeds * (576 + 2 * 1732) * 330e9 / 1e15)
    if "cache_inputs" in cfg["train"]:  # decoded once, augmented afresh: same FLOPs, less decoding held
        kept = ps.project_dag(paper_config(tmp_path, **{"train.use_augmentations": True, "train.cache_inputs": True}),
                              m, a)["stages"]
        assert kept["causal_film.train"]["pflop"] == pytest.approx(stages["causal_film.train"]["pflop"])
        assert kept["causal_film.train"]["hours_held"] < stages["causal_film.train"]["hours_held"]
    workers = ps.project_dag(paper_config(tmp_path, **{"train.num_workers": 8}), m, a)
    assert workers["total_gpu_hours_held"] < out["total_gpu_hours_held"]
    bf16 = ps.project_dag(paper_config(tmp_path, **{"train.mixed_precision": True, "train.amp_dtype": "bf16"}), m, a)
    assert "bf16" in bf16["stages"]["dinomaly.train"]["precision"]
    assert bf16["stages"]["dinomaly.train"]["gpu_hours_compute"] < stages["dinomaly.train"]["gpu_hours_compute"]

    result = ps.result_dict(cfg, m, out, a, 1.0)
    assert {"total_gpu_hours_compute", "total_gpu_hours_held", "gpu", "stages", "backbones"} <= set(result)
    assert set(result["backbones"]) == set(ps.BACKBONES)
    for stage in result["stages"].values():
        assert {"pflop", "gpu_hours_compute", "hours_held", "peak_rss_gb", "disk_gb"} <= set(stage)
    for backbone in result["backbones"].values():
        assert {"gflop_per_sample", "cache_mb_per_sample"} <= set(backbone)
    text = ps.markdown(result, baseline=copy.deepcopy(result))
    assert "→" in text and "| features |" in text


def test_cost_model_of_shared_passes_and_the_input_store(tmp_path):
    """One job per method and seed; Causal-FiLM runs on one augmented TRAIN stream share its backbone pass;
    the input store moves decoding into CPU jobs and the GPU jobs read it at its rate x their workers."""
    cfg = paper_config(tmp_path, **{"train.use_augmentations": True})
    m = stated_measurement(cfg)
    separate = ps.project_dag(cfg, m, assumptions())
    together = ps.project_dag(cfg, m, assumptions(per_run_jobs=False))
    seeds, epochs = len(cfg["seeds"]), cfg["train"]["epochs"]
    cf_runs = seeds * (len(cfg["protocols"]) + len(cfg["ablations"]))
    assert separate["stages"]["causal_film.train"]["jobs"] == cf_runs
    assert together["stages"]["causal_film.train"]["jobs"] == seeds  # one job per seed
    assert together["counts"]["jobs"] == 3 + len(cfg["methods"]) * seeds  # + the feature-cache builds
    # with augmentation everywhere, a seed's runs share one stream unless a protocol or ablation changes
    # what the backbones see (the stream key); each run still trains its own head
    from weldfilm.run_keys import train_stream_key

    streams = len({(s["seed"], train_stream_key(r)) for s, r in ps.all_runs(cfg) if s["method"] == "causal_film"})
    assert streams < cf_runs
    backbones = (160 + 130 + 1700) * 1e9
    expected = (streams * backbones + cf_runs * 26e9) * epochs * 576 / 1e15
    assert together["stages"]["causal_film.train"]["pflop"] == pytest.approx(expected)
    assert together["total_gpu_hours_held"] < separate["total_gpu_hours_held"]

    stored_cfg = paper_config(tmp_path, **{"train.use_augmentations": True, "inputs.store": True,
                                           "train.num_workers": "auto"})
    stored = ps.project_dag(stored_cfg, m, assumptions(per_run_jobs=False))
    workers = ps.loader_workers(stored_cfg, ps.train_rule("late_fusion"))
    assert workers == ps.slurm_threads("train_late_fusion") - 1 >= 1
    assert stored["counts"]["cpu_jobs"] > 0 and stored["stages"]["inputs (CPU)"]["gpu"] is False
    assert stored["total_cpu_job_hours"] == pytest.approx(stored["stages"]["inputs (CPU)"]["hours_held"])
    assert stored["total_gpu_hours_held"] == pytest.approx(
        sum(s["hours_held"] for s in stored["stages"].values() if s["gpu"]))
    # Late Fusion: the same FLOPs, loading from the store with workers instead of decoding in-process
    for stage in ("late_fusion.train", "late_fusion.select"):
        assert stored["stages"][stage]["pflop"] == pytest.approx(together["stages"][stage]["pflop"])
        assert stored["stages"][stage]["hours_held"] < together["stages"][stage]["hours_held"] / 10
    # a slow disk under the store bounds its readers: 1 MB a sample at 1 MB/s is a second a sample
    slow = ps.project_dag(stored_cfg, m, assumptions(per_run_jobs=False, store_gbps=1e-3))
    n = cfg["late_fusion"]["audio_epochs"] * 1732
    assert slow["stages"]["late_fusion.select"]["hours_held"] >= n / 3600
