"""Paper-scale benchmark: measure every stage at paper sizes on N synthetic runs, project the full paper DAG.

Part 1 (counting) and part 2 (measurement) run paper-size random-init backbones
(``weldfilm.models.sizes.build_random_backbone``) and the methods' own modules, sized from the
config's ``paper`` profile, on N synthetic runs written at paper sizes (192 kHz audio, ~30 fps video,
5 photos): FLOPs per sample (``torch.utils.flop_counter.FlopCounterMode``; ``cdist`` added as
2*P*R*D), CPU seconds, bytes a sample stores, peak RSS of each step, and the loader's samples/s of
one worker (the project's ``WeldingDataset``) with augmentation on and off.

Part 3 (the cost model, ``project_dag``) turns those per-sample figures into the full paper DAG at
4,040 runs (TRAIN 576 / VAL 1,732 / TEST 1,732): the runs are the config's methods x seeds x
protocols plus ablations x seeds; what each run does per epoch is read from the config and the
methods' own objects (feature cache used or not, selection split, inputs cached or re-decoded,
precision, loader workers). Every GPU job runs serially (``--resources gpu=1``): hours held = the
sum over jobs of each pass's time (compute + loading when the loader runs in the training process,
``num_workers: 0``; the larger of the two with workers) plus each job's fixed cost.

    python benchmarks/paper_scale.py [--runs 2] [--json PATH] [--markdown docs/paper-scale.md]
                                     [--gpu-tflops 989] [--gpu-fp32-tflops 67] [--utilization 0.35]
                                     [--baseline PATH ...]  # earlier --json results: before/after
    python benchmarks/paper_scale.py --from-json PATH [--set KEY=VALUE ...] [--per-run-jobs] [--label TEXT]
                                     # re-project a stored measurement (another config or workflow state)
    python benchmarks/paper_scale.py --quick          # tiny backbones and sizes (the tests use it)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

BACKBONES = ("vjepa2", "ast", "dinov3", "clip", "dino_vitb8", "dinov2_reg")
CONFIG_KEY = {"vjepa2": "video", "ast": "audio", "dinov3": "image", "clip": "clip", "dino_vitb8": "m3dm_rgb",
              "dinov2_reg": "dinomaly_encoder"}
# Split sizes of the paper's data (shared/spec/dataset.md): TRAIN is good runs only.
PAPER_SPLITS = {"train": 576, "val": 1732, "test": 1732}
# GPU defaults: NVIDIA H100 SXM5 datasheet, dense (no sparsity).
H100_BF16_TFLOPS = 989.4
H100_TF32_TFLOPS = 494.7
H100_FP32_TFLOPS = 66.9
TRAIN_RULE = "train_{method}"  # workflow/rules/methods.smk: one train job per method and seed
CF_PROMPT_DEFAULT = "a normal weld"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# =============================================================================================== part 1: counting
def _cdist_flop(x1_shape, x2_shape, *args, out_shape=None, **kwargs) -> int:
    """``cdist`` (``_cdist_forward`` or its matrix-product path ``_euclidean_dist``): 2 * P * R * D per batch
    element."""
    *batch, p, d = x1_shape
    r = x2_shape[-2]
    return 2 * int(np.prod(batch or [1])) * p * r * d


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                            **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# FlopCounterMode has no formula for cdist nor for the CPU kernel of scaled_dot_product_attention (it
# counts the CUDA flash/efficient kernels only): without these, attention is missing from every count.
CUSTOM_FLOPS = {torch.ops.aten._cdist_forward: _cdist_flop, torch.ops.aten._euclidean_dist: _cdist_flop,
                torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop,
                torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flop}


def count_flops(fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` under FlopCounterMode: ``(total FLOPs, {module path: FLOPs}, result)``.

    Module paths are FlopCounterMode's (root class name, then attribute names), e.g.
    ``DinomalyTrainable.encoder``; ``Global`` is the total.
    """
    with FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as counter:
        result = fn(*args, **kwargs)
    per_module = {name: int(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}
    return int(counter.get_total_flops()), per_module, result


def counted_call(fn, *args, **kwargs):
    """``count_flops`` and the call's wall/CPU seconds (the counting pass is the timed pass)."""
    with timing() as t:
        total, per_module, result = count_flops(fn, *args, **kwargs)
    return total, per_module, result, t


def module_flops(per_module: dict, child: str) -> int:
    """FLOPs of the root module's attribute ``child`` (e.g. ``encoder``), also when the code calls its
    submodules directly instead of its forward: the outermost entries below ``<root>.<child>`` are summed."""
    total = 0
    for root in {name.split(".")[0] for name in per_module if name != "Global"}:
        prefix = f"{root}.{child}"
        names = [n for n in per_module if n == prefix or n.startswith(prefix + ".")]
        outermost = [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]
        total += sum(per_module[n] for n in outermost)
    return total


def backbone_call(frozen, name: str):
    """The call Causal-FiLM makes of backbone ``name`` (``FrozenBackbones``) on a collated data batch."""
    calls = {"dinov3": lambda batch: frozen.image_tokens(batch["post_weld_images"]),
             "vjepa2": lambda batch: frozen.video_tokens(batch["video"]),
             "ast": lambda batch: frozen.audio_tokens(batch["audio"])}
    return calls[name]


def m3dm_extract_flops(extractor, images, clouds) -> tuple[int, int]:
    """M3DM's extractor on ``images (B,3,H,W)`` and ``clouds``: (total FLOPs, FLOPs of the RGB ViT)."""
    total, per_module, _ = count_flops(extractor, images, clouds)
    return total, module_flops(per_module, "rgb_backbone")


def dinomaly_flops(head, batch, train: bool) -> tuple[int, int, object]:
    """Dinomaly's head on a run batch, one training step (loss + backward) or scoring:
    (total FLOPs, FLOPs of the frozen encoder, Timing)."""
    if train:
        head.train()

        def step():
            loss = head.training_losses(batch)["loss"]
            loss.backward()
            return loss
    else:
        head.eval()

        @torch.no_grad()
        def step():
            return head.scores_and_maps(batch)
    total, per_module, _, t = counted_call(step)
    # the head calls its encoder directly (a root module of its own) or through its forward
    encoder = per_module.get(type(head.encoder).__name__) or module_flops(per_module, "encoder")
    return total, encoder, t


class PeakRss:
    """Peak resident set size (bytes) of this process while the block runs (sampled every 20 ms)."""

    def __init__(self):
        self.peak = 0

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        self.peak, self._stop = self.current(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.current())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


@dataclass
class Timing:
    wall_s: float = 0.0
    cpu_s: float = 0.0


@contextlib.contextmanager
def timing():
    out = Timing()
    wall, cpu = time.perf_counter(), time.process_time()
    yield out
    out.wall_s, out.cpu_s = time.perf_counter() - wall, time.process_time() - cpu


def param_bytes(*modules) -> int:
    return sum(p.numel() * p.element_size() for m in modules if m is not None for p in m.parameters())


def tensor_bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    return 0


# ============================================================================================ part 2: measurement
def load_benchmark_config(config_path, profile: str, quick: bool, root: Path, overrides=()) -> dict:
    """The config as the workflow sees it (profile applied, ``--set`` overrides on top), data/results
    pointed at ``root``."""
    from weldfilm.config import DEFAULT_CONFIG, load_yaml, parse_set_args, prepare

    raw = load_yaml(Path(config_path or DEFAULT_CONFIG).read_text()) or {}
    raw["profile"] = "default" if quick else profile
    cfg = prepare(raw, parse_set_args(overrides)) if overrides else prepare(raw)
    cfg["results"] = str(root)
    cfg["data"].update(root=str(root / "synthetic"), paper_manifest=None, exclude_runs=[])
    cfg["train"]["device"] = "cpu"
    for key in CONFIG_KEY.values():
        cfg["backbones"][key] = str(root / "backbones" / key)  # only names: the models live in memory
    return cfg


def write_runs(cfg: dict, runs: int, duration_s: float, video_size: int, photo_size: int) -> list[str]:
    """N good synthetic runs at the given sizes (192 kHz audio, 30 fps video, 5 photos), all in TRAIN."""
    from weldfilm.data.manifest import build_manifest
    from weldfilm.data.synthetic.generator import RenderOptions, write_run
    from weldfilm.data.synthetic.plan import plan_runs

    root = Path(cfg["data"]["root"])
    options = RenderOptions(video_size=video_size, video_fps=30.0, image_size=photo_size,
                            num_angles=cfg["preprocess"]["num_angles"], audio_sr=192000)
    good = [plan for plan in plan_runs(0, max(4, runs), 1, duration_s) if plan.configuration.class_code == 0]
    for index, plan in enumerate(good[:runs]):
        started = time.perf_counter()
        write_run(plan, options, root)
        log(f"synthetic run {index + 1}/{runs} written ({time.perf_counter() - started:.1f} s)")
    manifest_csv = Path(cfg["results"]) / "data" / "manifest.csv"
    table = build_manifest(root, manifest_csv)
    table["SPLIT"] = "TRAIN"  # every measured run in one split (paper TRAIN is good runs only)
    table.to_csv(manifest_csv, index=False)
    return list(table["SUBDIRS"])


class BackboneSource:
    """Random-init backbones in memory (``weldfilm.models.sizes.build_random_backbone``): paper or tiny size.

    Shapes follow ``preprocess`` (at paper size only V-JEPA2's crop_size does, as for the real checkpoint);
    the CLIP tokenizer is the package's offline one (padded to CLIP's 49408 tokens at paper size).
    """

    def __init__(self, cfg: dict, size: str, seed: int = 0):
        from transformers import PreTrainedTokenizerFast

        from weldfilm.models.sizes import CLIP_VOCAB_SIZE
        from weldfilm.models.tiny import BOS_TOKEN, EOS_TOKEN, build_clip_tokenizer

        self.size, self.seed = size, seed
        pre = cfg["preprocess"]
        self.shapes = {"frame_size": pre["frame_size"], "video_frames": pre["video_frames"],
                       "image_size": pre["image_size"], "mel_bins": pre["audio_mel_bins"],
                       "audio_frames": pre["audio_frames"]}
        raw = build_clip_tokenizer(vocab_size=CLIP_VOCAB_SIZE if size == "paper" else None)
        self.clip_ids = {"vocab_size": raw.get_vocab_size(), "bos_token_id": raw.token_to_id(BOS_TOKEN),
                         "eos_token_id": raw.token_to_id(EOS_TOKEN)}
        self.tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
                                                 unk_token=EOS_TOKEN, pad_token=EOS_TOKEN)

    def build(self, name: str, **config_overrides):
        from weldfilm.models.sizes import build_random_backbone

        model = build_random_backbone(name, self.size, self.seed, clip_ids=self.clip_ids,
                                      **self.shapes, **config_overrides)
        model.requires_grad_(False)
        return model.eval()


@contextlib.contextmanager
def in_memory_backbones(models: dict):
    """``weldfilm.models.backbones.load_pretrained`` answers with the in-memory model of a configured path."""
    import weldfilm.models.backbones as backbones

    original = backbones.load_pretrained

    def load(path, expected_class, **overrides):
        model = models[str(path)]
        if not isinstance(model, expected_class):
            raise TypeError(f"{path}: {type(model).__name__} is not {expected_class.__name__}")
        return model

    backbones.load_pretrained = load
    try:
        yield
    finally:
        backbones.load_pretrained = original


@dataclass
class Measured:
    """Everything part 2 measures: per-sample FLOPs/seconds/bytes, loader rates, peaks, model sizes."""

    runs: int
    backbones: dict = field(default_factory=dict)      # name -> {gflop_per_sample, cache_mb_per_sample, params, ...}
    components: dict = field(default_factory=dict)     # name -> {flop, cpu_s, wall_s, per}
    loader: dict = field(default_factory=dict)         # name -> samples/s of one worker
    peaks: dict = field(default_factory=dict)          # step -> peak RSS bytes
    sizes: dict = field(default_factory=dict)          # misc sizes (params bytes, patches, dims)
    cf_heads: dict = field(default_factory=dict)       # head variant key -> {train_flop, score_flop, params}

    def component(self, name, flop, t: Timing, per: int, note: str = "") -> None:
        self.components[name] = {"flop_per_sample": flop / per, "cpu_s_per_sample": t.cpu_s / per,
                                 "wall_s_per_sample": t.wall_s / per, "note": note}


def loader_rate(dataset, runs: int) -> tuple[float, Timing]:
    """Samples/s of one process reading ``dataset[i]`` (one warm-up read first)."""
    dataset[0]
    with timing() as t:
        for index in range(runs):
            dataset[index % len(dataset)]
    return runs / t.wall_s, t


def measure_input_store(cfg: dict, run_cfgs: dict, runs: int, m: Measured) -> None:
    """Fill the decoded-input store for the measured runs (TRAIN), kind by kind, in one process: each
    kind's decoding rate (samples/s of one worker: ``inputs.<kind label>``) and bytes per run."""
    from weldfilm.data import store

    kinds = {}
    for method, r in run_cfgs.items():
        for spec in store.method_kinds(r, method):
            kinds.setdefault(store.kind_name(spec), (spec, r))
    for name, (spec, r) in kinds.items():
        path = store.store_file(cfg["results"], name, "train")
        with timing() as t:
            store.build_input_kind(r, spec, "train", path, threads=1)
        label = store.kind_label(spec)
        m.loader[f"inputs.{label}"] = runs / t.wall_s
        m.sizes[f"store_bytes.{label}"] = path.stat().st_size / runs
        log(f"input store {label}: {runs / t.wall_s:.2f} runs/s decoded, {path.stat().st_size / runs / 1e6:.2f} MB a run")
    store_read_bytes(run_cfgs, m)


def store_read_bytes(run_cfgs: dict, m: Measured) -> None:
    """Bytes one sample reads from the store, per loader (what a disk that is not the page cache must deliver)."""
    from weldfilm.data import store

    readers = {"causal_film.aug_on": ("causal_film", None), "causal_film.aug_off": ("causal_film", None),
               "late_fusion.audio": ("late_fusion", "audio"), "late_fusion.video": ("late_fusion", "video"),
               "m3dm": ("m3dm", None), "dinomaly": ("dinomaly", None)}
    for key, (method, branch) in readers.items():
        r = run_cfgs[method]
        specs = store.method_kinds(r, method)
        if branch:  # one Late Fusion branch reads one of its method's kinds
            specs = [spec for spec in specs if spec["modality"] == branch]
        m.sizes[f"store_read_bytes.{key}"] = sum(m.sizes[f"store_bytes.{store.kind_label(spec)}"] for spec in specs)


def measure_loaders(cfg: dict, run_cfgs: dict, runs: int, m: Measured, prefix: str = "") -> None:
    """Samples/s of one worker for each method's datasets: decoding the files, or (``prefix`` 'store.',
    after ``measure_input_store``) reading the decoded-input store."""
    from weldfilm.methods.dinomaly.method import DinomalyMethod
    from weldfilm.methods.late_fusion.method import LateFusionMethod
    from weldfilm.methods.m3dm.method import M3DMMethod
    from weldfilm.methods.causal_film.method import CausalFiLMMethod

    scratch = Path(cfg["results"]) / "scratch"
    cf = CausalFiLMMethod(run_cfgs["causal_film"], scratch / "cf", torch.device("cpu"))
    for augment in (False, True):
        data = cf.dataset("train", augment=augment)
        m.loader[f"{prefix}causal_film.aug_{'on' if augment else 'off'}"], _ = loader_rate(data, runs)
    import weldfilm.methods.causal_film.method as cf_module

    if hasattr(cf_module, "DecodedOnce") and not prefix:  # train.cache_inputs: decoded once, augmented afresh every epoch
        data = cf.dataset("train", augment=True)
        data.read_arrays = cf_module.DecodedOnce(data.read_arrays)
        for index in range(runs):
            data[index]
        m.loader["causal_film.aug_only"], _ = loader_rate(data, runs)
    lf = LateFusionMethod(run_cfgs["late_fusion"], scratch / "lf", torch.device("cpu"))
    for branch in ("audio", "video"):
        dataset = lf._dataset("train", branch)
        dataset = getattr(dataset, "dataset", dataset)  # the decoding dataset under MemoryCachedDataset
        m.loader[f"{prefix}late_fusion.{branch}"], _ = loader_rate(dataset, runs)
    m3 = M3DMMethod(run_cfgs["m3dm"], scratch / "m3", torch.device("cpu"))
    images = m3.dataset("train", modalities=("post_weld_images",), num_angles=1, image_size=m3.params["image_size"])

    class WithCloud(torch.utils.data.Dataset):  # M3DM reads the sensor CSV into a point cloud per run
        def __len__(self):
            return len(images)

        def __getitem__(self, index):
            return images[index], m3._cloud(images.sample_ids[index])

    m.loader[f"{prefix}m3dm"], _ = loader_rate(WithCloud(), runs)
    din = DinomalyMethod(run_cfgs["dinomaly"], scratch / "din", torch.device("cpu"))
    dataset = din._images("train") if hasattr(din, "_images") else din._loader("train").dataset
    while hasattr(dataset, "dataset"):  # the decoding WeldingDataset under Subset / MemoryCachedDataset
        dataset = dataset.dataset
    m.loader[f"{prefix}dinomaly"], _ = loader_rate(dataset, runs)
    for name, rate in m.loader.items():
        if name.startswith(prefix):
            log(f"loader {name}: {rate:.2f} samples/s (one worker)")


def measure_causal_film(cfg: dict, source: BackboneSource, cf_run_cfgs: list, runs: int, m: Measured) -> None:
    """The four backbones through FrozenBackbones (one at a time), then every Causal-FiLM head variant."""
    from weldfilm.data.dataset import collate_batch
    from weldfilm.methods import get_method
    from weldfilm.models.backbones import FrozenBackbones
    from weldfilm.methods.causal_film.model import CausalFiLMHead

    base = cf_run_cfgs[0]
    method = get_method("causal_film")(base, Path(cfg["results"]) / "scratch" / "cf", torch.device("cpu"))
    data = method.dataset("train", augment=False)
    items = [data[i] for i in range(runs)]
    batch = collate_batch(items)
    one = collate_batch(items[:1])
    m.sizes["cf_input_bytes_per_sample"] = tensor_bytes({k: v for k, v in items[0].items() if isinstance(v, torch.Tensor)})
    nowhere = Path(cfg["results"]) / "no-processor-json"
    directories = {key: str(nowhere) for key in ("video", "audio", "image", "clip")}
    log("building DINOv3 (image backbone)")
    with PeakRss() as peak:
        image = source.build("dinov3")
        frozen = FrozenBackbones(None, None, image, None, None, directories, cfg["preprocess"],
                                 base["causal_film"]["result_layers"], "cpu")
        dims = {"image": image.config.hidden_size,
                "image_prefix_tokens": 1 + int(getattr(image.config, "num_register_tokens", 0))}
        del image  # held by ``frozen`` only, freed after its measurement
        features = {}
        for name, slot, key in (("dinov3", "image", "image_tokens"), ("vjepa2", "video", "video_tokens"),
                                ("ast", "audio", "audio_tokens")):
            call = backbone_call(frozen, name)
            if name != "dinov3":
                log(f"building {name}")
                model = source.build(name)
                setattr(frozen, f"{slot}_model", model)
                dims[slot] = model.config.hidden_size
            model = getattr(frozen, f"{slot}_model")
            flop, _, out, t0 = counted_call(call, one)
            with timing() as t:
                tokens = torch.cat([out, *[call(collate_batch([item])) for item in items[1:]]])
            t.cpu_s, t.wall_s = t.cpu_s + t0.cpu_s, t.wall_s + t0.wall_s
            features[key] = tokens
            cache_bytes = tensor_bytes(tokens[:1])
            if base["train"].get("feature_cache_dtype", "fp32") == "fp16":
                cache_bytes //= 2
            m.backbones[name] = {"gflop_per_sample": flop / 1e9, "cache_mb_per_sample": cache_bytes / 1e6,
                                 "cpu_s_per_sample": t.cpu_s / runs, "wall_s_per_sample": t.wall_s / runs,
                                 "params": sum(p.numel() for p in model.parameters()),
                                 "param_bytes": param_bytes(model), "tokens": list(out.shape[1:]),
                                 "class": type(model).__name__}
            log(f"{name}: {flop / 1e9:.1f} GFLOP/sample, {t.wall_s / runs:.1f} s/sample, tokens {list(out.shape[1:])}")
            setattr(frozen, f"{slot}_model", None)
            del model
            gc.collect()
        log("building clip (text tower)")
        clip = source.build("clip")
        frozen.clip_model, frozen.tokenizer = clip, source.tokenizer
        prompt = base["loss"].get("text_prompt", CF_PROMPT_DEFAULT)
        flop, _, text, t = counted_call(frozen.text_embedding, prompt)
        dims["clip"] = clip.config.projection_dim
        m.backbones["clip"] = {"gflop_per_sample": flop / 1e9, "cache_mb_per_sample": 0.0, "cpu_s_per_sample": t.cpu_s,
                               "wall_s_per_sample": t.wall_s, "params": sum(p.numel() for p in clip.parameters()),
                               "param_bytes": param_bytes(clip), "tokens": list(text.shape),
                               "class": type(clip).__name__,
                               "note": "the prompt, once per cache file or job (not per run)"}
        frozen.clip_model = None
        del clip
        gc.collect()
    m.peaks["backbones (one at a time)"] = peak.peak
    extra = {"num_images": batch["num_images"], "sensor": batch["sensor"], "label": batch["label"],
             "class_label": batch["class_label"], "sample_id": batch["sample_id"]}
    feats = {**features, **extra}
    m.sizes["cf_cache_bytes_per_sample_extra"] = tensor_bytes({k: v[:1] for k, v in extra.items()
                                                              if isinstance(v, torch.Tensor)})
    m.sizes["cf_dims"] = dims
    log("Causal-FiLM heads (one per distinct head config)")
    with PeakRss() as peak:
        variants = {}
        for run_cfg in cf_run_cfgs:
            variants.setdefault(head_key(run_cfg), run_cfg)
        single = {k: (v[:1] if isinstance(v, (torch.Tensor, list)) else v) for k, v in feats.items()}
        for index, (key, run_cfg) in enumerate(variants.items()):
            # the first (the base config) on all measured runs, timed; the variants on one run (FLOPs per
            # sample do not depend on the batch)
            batch, size = (feats, runs) if index == 0 else (single, 1)
            torch.manual_seed(0)
            head = CausalFiLMHead.from_config(run_cfg, dims, text if run_cfg["loss"]["lambda_text"] > 0 else None)
            head.train()

            def train_step():
                loss = head.training_losses(batch)["loss"]
                loss.backward()
                return loss

            train_flop, _, _, t_train = counted_call(train_step)
            head.eval()
            with torch.no_grad():
                score_flop, _, _, t_score = counted_call(head.anomaly_scores, batch)
            m.cf_heads[key] = {"train_flop": train_flop / size, "score_flop": score_flop / size,
                               "train_cpu_s": t_train.cpu_s / size, "score_cpu_s": t_score.cpu_s / size,
                               "params": sum(p.numel() for p in head.parameters() if p.requires_grad),
                               "param_bytes": param_bytes(head),
                               "runs": [f"{r['run']['protocol']}/{r['run']['ablation'] or '-'}" for r in cf_run_cfgs
                                        if head_key(r) == key and r["run"]["seed"] == cf_run_cfgs[0]["run"]["seed"]]}
            log(f"Causal-FiLM head {index + 1}/{len(variants)} ({', '.join(m.cf_heads[key]['runs'])}): "
                f"{train_flop / size / 1e9:.1f} GFLOP/training sample, {t_train.wall_s / size:.1f} s/sample")
            del head
    m.peaks["causal_film heads"] = peak.peak
    first = m.cf_heads[head_key(base)]
    log(f"Causal-FiLM head: {first['params'] / 1e6:.1f} M params, {first['train_flop'] / 1e9:.1f} GFLOP/training "
        f"sample, {first['score_flop'] / 1e9:.1f} GFLOP/scored sample ({len(m.cf_heads)} distinct head configs)")


def head_key(run_cfg: dict) -> str:
    from weldfilm.io import stable_hash

    return stable_hash({"causal_film": run_cfg["causal_film"], "loss": run_cfg["loss"],
                        "preprocess": run_cfg["preprocess"]})


def measure_late_fusion(run_cfg: dict, runs: int, m: Measured) -> None:
    from weldfilm.methods.late_fusion.method import LateFusionMethod
    from weldfilm.data.dataset import collate_batch

    method = LateFusionMethod(run_cfg, Path(run_cfg["results"]) / "scratch" / "lf", torch.device("cpu"))
    with PeakRss() as peak:
        for branch in ("audio", "video"):
            dataset = method._dataset("train", branch)
            batch = collate_batch([dataset[i] for i in range(runs)])
            head = method._head(branch).train()

            def train_step():
                loss = head.training_losses(batch)["loss"]
                loss.backward()
                return loss

            flop, _, _, t = counted_call(train_step)
            m.component(f"late_fusion.{branch}.train", flop, t, runs)
            head.eval()
            with torch.no_grad():
                flop, _, _, t = counted_call(head.anomaly_scores, batch)
            m.component(f"late_fusion.{branch}.score", flop, t, runs)
            m.sizes[f"late_fusion.{branch}.param_bytes"] = param_bytes(head)
            m.sizes[f"late_fusion.{branch}.input_bytes"] = tensor_bytes(dataset[0][branch])
            log(f"late fusion {branch} AE: {m.components[f'late_fusion.{branch}.train']['flop_per_sample'] / 1e9:.2f} "
                f"GFLOP/training sample, input {m.sizes[f'late_fusion.{branch}.input_bytes'] / 1e6:.1f} MB")
    m.peaks["late_fusion"] = peak.peak


def measure_m3dm(run_cfg: dict, source: BackboneSource, runs: int, m: Measured) -> None:
    """M3DM's own extractor and batches (load_pretrained answered from memory), its bank, coreset and scoring."""
    from weldfilm.methods.m3dm.method import MODALITY_KEYS, M3DMMethod
    from weldfilm.methods.m3dm.bank import PatchBank, reweighted_score
    from weldfilm.methods.m3dm.coreset import coreset_indices, projection_dim

    run_cfg = copy.deepcopy(run_cfg)
    if "encoder_cache" in run_cfg["m3dm"]:  # measure the extractor itself (the cost model applies the cache)
        run_cfg["m3dm"]["encoder_cache"] = False
    p = run_cfg["m3dm"]
    method = M3DMMethod(run_cfg, Path(run_cfg["results"]) / "scratch" / "m3", torch.device("cpu"))
    with PeakRss() as peak:
        log("building dino_vitb8 (M3DM RGB)")
        model = source.build("dino_vitb8")
        with in_memory_backbones({run_cfg["backbones"]["m3dm_rgb"]: model}):
            extractor = method.extractor()
        images = method.dataset("train", modalities=("post_weld_images",), num_angles=1, image_size=p["image_size"])
        first = images[0]["post_weld_images"][:1]
        cloud = method._cloud(images.sample_ids[0])[None]
        total, rgb_flop = m3dm_extract_flops(extractor, first, cloud)
        with timing() as t:
            batches = list(method._batches("train"))
        ids = [sid for b in batches for sid in b[0]]
        patches = {"rgb": torch.cat([b[1] for b in batches]), "point": torch.cat([b[2] for b in batches])}
        m.backbones["dino_vitb8"] = {"gflop_per_sample": rgb_flop / 1e9, "cache_mb_per_sample": 0.0,
                                     "cpu_s_per_sample": t.cpu_s / len(ids), "wall_s_per_sample": t.wall_s / len(ids),
                                     "params": sum(q.numel() for q in model.parameters()),
                                     "param_bytes": param_bytes(model), "tokens": list(patches["rgb"].shape[1:]),
                                     "class": type(model).__name__,
                                     "note": "M3DM's first photo at m3dm.image_size; its point transformer is in m3dm.extract"}
        m.component("m3dm.extract", total, t, 1, note="RGB ViT + point transformer (incl. FPS and kNN) per run")
        m.components["m3dm.extract"].update(cpu_s_per_sample=t.cpu_s / len(ids), wall_s_per_sample=t.wall_s / len(ids))
        m.components["m3dm.point"] = {"flop_per_sample": float(total - rgb_flop), "cpu_s_per_sample": 0.0,
                                      "wall_s_per_sample": 0.0, "note": "point transformer part of m3dm.extract"}
        m.sizes["m3dm.patches_per_run"] = {key: int(patches[key].shape[1]) for key in MODALITY_KEYS}
        m.sizes["m3dm.dims"] = {key: int(patches[key].shape[-1]) for key in MODALITY_KEYS}
        m.sizes["m3dm.param_bytes"] = param_bytes(extractor)
        log(f"M3DM extract: RGB {rgb_flop / 1e9:.1f} + point {(total - rgb_flop) / 1e9:.1f} GFLOP/run, "
            f"patches per run {m.sizes['m3dm.patches_per_run']}, {t.wall_s / len(ids):.1f} s/run")
        # coreset on the measured bank: FLOPs per (pick x item x dim), scaled to the paper bank in part 3
        coreset = {}
        for key in MODALITY_KEYS:
            flat = patches[key].reshape(-1, patches[key].shape[-1])
            sources = torch.arange(len(ids)).repeat_interleave(patches[key].shape[1])
            flop, _, (bank, info), t = counted_call(PatchBank.build, flat, sources, p["f_coreset"], p["coreset_eps"], 0)
            dim = info.get("projected_dim") or flat.shape[1]
            unit = flop / max(1, info["selected"] * flat.shape[0] * dim)
            coreset[key] = {"flop_per_pick_item_dim": unit, "cpu_s": t.cpu_s, "items": int(flat.shape[0]),
                            "picks": int(info["selected"]), "dim": int(dim)}
        m.sizes["m3dm.coreset"] = coreset
        # scoring of one run against a bank of the size the paper config gives (random entries, same shapes)
        n_bank_runs = min(p["max_train_samples"] or PAPER_SPLITS["train"], PAPER_SPLITS["train"])
        bank_size = {key: max(1, int(p["f_coreset"] * n_bank_runs * patches[key].shape[1])) for key in MODALITY_KEYS}
        score_flop, score_t = 0, Timing()
        for key in MODALITY_KEYS:
            bank = torch.randn(bank_size[key], patches[key].shape[-1])
            flop, _, _, t = counted_call(reweighted_score, patches[key][0], bank, p["n_reweight"], None,
                                         p["distance_scale"])
            score_flop += flop
            score_t.cpu_s += t.cpu_s
            score_t.wall_s += t.wall_s
            del bank
        m.component("m3dm.bank_score", score_flop, score_t, 1,
                    note=f"one run against coreset banks of {bank_size} entries")
        m.sizes["m3dm.bank_entries"] = bank_size
        m.sizes["m3dm.jl_dim_paper"] = {key: projection_dim(n_bank_runs * patches[key].shape[1], p["coreset_eps"])
                                        for key in MODALITY_KEYS}
        del extractor, method, model, patches
        gc.collect()
    m.peaks["m3dm"] = peak.peak
    log(f"M3DM bank scoring: {score_flop / 1e9:.1f} GFLOP/run against coreset banks of {bank_size} entries")


def measure_dinomaly(run_cfg: dict, source: BackboneSource, runs: int, m: Measured) -> None:
    """Dinomaly's own head (frozen encoder + trainable part) on its own loader's batches."""
    from weldfilm.methods.dinomaly.method import DinomalyMethod

    method = DinomalyMethod(run_cfg, Path(run_cfg["results"]) / "scratch" / "din", torch.device("cpu"))
    with PeakRss() as peak:
        log("building dinov2_reg (Dinomaly encoder)")
        model = source.build("dinov2_reg")
        with in_memory_backbones({run_cfg["backbones"]["dinomaly_encoder"]: model}):
            head = method._head()
        images = method._images("train") if hasattr(method, "_images") else method._loader("train").dataset
        batch = next(iter(method.loader(images, train=False, batch_size=runs)))
        images = int(batch["num_images"].sum())
        flop, _, t = dinomaly_flops(head, batch, train=True)
        m.component("dinomaly.train", flop, t, runs, note=f"{images / runs:g} images per run")
        score, encoder, t_s = dinomaly_flops(head, batch, train=False)
        m.component("dinomaly.score", score, t_s, runs)
        m.backbones["dinov2_reg"] = {"gflop_per_sample": encoder / runs / 1e9, "cache_mb_per_sample": 0.0,
                                     "cpu_s_per_sample": t_s.cpu_s / runs, "wall_s_per_sample": t_s.wall_s / runs,
                                     "params": sum(q.numel() for q in head.encoder.parameters()),
                                     "param_bytes": param_bytes(head.encoder), "class": type(model).__name__,
                                     "tokens": [images // runs, head.crop_size // model.config.patch_size],
                                     "note": f"{images / runs:g} images per run, blocks 0..{head.target_layers[-1]} "
                                             "(Dinomaly truncates the rest)"}
        m.sizes["dinomaly.trainable_param_bytes"] = sum(q.numel() * q.element_size() for q in head.parameters()
                                                        if q.requires_grad)
        m.sizes["dinomaly.param_bytes"] = param_bytes(head)
        m.sizes["dinomaly.images_per_run"] = images / runs
        m.sizes["dinomaly.tokens_per_image"] = (head.crop_size // model.config.patch_size) ** 2
        m.sizes["dinomaly.dim"] = int(model.config.hidden_size)
        log(f"Dinomaly: encoder {encoder / runs / 1e9:.1f} GFLOP/run, training {flop / runs / 1e9:.1f}, "
            f"scoring {score / runs / 1e9:.1f} GFLOP/run")
        del head, model, method
        gc.collect()
    m.peaks["dinomaly"] = peak.peak


def measure(cfg: dict, args) -> Measured:
    from weldfilm.config import run_config

    root = Path(cfg["results"])
    m = Measured(runs=args.runs)
    pre = cfg["preprocess"]
    with PeakRss() as peak:
        write_runs(cfg, args.runs, args.duration_s, args.video_size, args.photo_size)
    m.peaks["synthetic data"] = peak.peak
    m.sizes["data_bytes_per_run"] = sum(f.stat().st_size for f in Path(cfg["data"]["root"]).rglob("*")
                                        if f.is_file()) / args.runs
    m.sizes["import_rss"] = PeakRss.current()
    m.sizes["load_average_at_start"] = os.getloadavg()[0]  # the loader rates depend on what else runs
    run_cfgs = {method: run_config(cfg, method, 0, "fair") for method in ("causal_film", "late_fusion", "m3dm",
                                                                         "dinomaly")}
    log(f"preprocessing: {pre['video_frames']} frames at {pre['frame_size']} px, {pre['num_angles']} photos at "
        f"{pre['image_size']} px, mel {pre['audio_mel_bins']}x{pre['audio_frames']}")
    measure_loaders(cfg, run_cfgs, args.runs, m)  # decoding the files (no store file exists yet)
    measure_input_store(cfg, run_cfgs, args.runs, m)
    measure_loaders(cfg, run_cfgs, args.runs, m, prefix="store.")
    source = BackboneSource(cfg, "tiny" if args.quick else "paper")
    measure_causal_film(cfg, source, [r for _, r in all_runs(cfg) if r["run"]["method"] == "causal_film"],
                        args.runs, m)
    measure_late_fusion(run_cfgs["late_fusion"], args.runs, m)
    measure_m3dm(run_cfgs["m3dm"], source, args.runs, m)
    measure_dinomaly(run_cfgs["dinomaly"], source, args.runs, m)
    m.peaks["process (whole benchmark)"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return m


# ============================================================================================ part 3: cost model
# Everything that says what the paper DAG does lives below: which jobs exist, what each does per
# epoch, in which precision, with which loader. It reads the config and the methods' own objects,
# so a change of behaviour there (shared passes, caches, precision keys, workers) changes the model.

def all_runs(cfg: dict) -> list[tuple[dict, dict]]:
    """Every run of the paper DAG as (settings, run config): methods x seeds x protocols, ablations x seeds.

    Mirrors workflow/rules/common.smk ``all_run_settings`` (ablations: Causal-FiLM, protocol fair).
    """
    from weldfilm.config import run_config

    settings = [dict(method=m, seed=s, protocol=p, ablation=None) for p in cfg["protocols"] for m in cfg["methods"]
                for s in cfg["seeds"]]
    settings += [dict(method="causal_film", seed=s, protocol="fair", ablation=a) for a in cfg["ablations"]
                 for s in cfg["seeds"]]
    return [(s, run_config(cfg, s["method"], s["seed"], s["protocol"], s["ablation"])) for s in settings]


def precision_of(run_cfg: dict, part: str) -> str:
    """The precision a part runs in on CUDA: 'bf16' / 'fp16' / 'tf32' / 'fp32'.

    ``part``: 'plain' (outside any autocast), 'head' (modules run by the Trainer and the scoring loops, under ``autocast_context``:
    ``train.mixed_precision`` + ``train.amp_dtype``) or 'backbone' (FrozenBackbones and M3DM's
    extractor run outside autocast; a ``backbones.precision`` / ``train.backbone_precision`` key
    is honoured when the config has one). fp32 matmuls run as TF32 only when a ``train.allow_tf32``
    key says so (torch's default for CUDA matmuls is full fp32).
    """
    train = run_cfg["train"]
    if part == "plain":  # modules outside autocast (M3DM's point transformer, banks, coreset)
        pass
    elif part == "backbone":
        chosen = run_cfg.get("backbones", {}).get("precision") or train.get("backbone_precision")
        if chosen and chosen != "fp32":
            return str(chosen)
    elif train.get("mixed_precision", False):
        return "bf16" if train.get("amp_dtype", "fp16") == "bf16" else "fp16"
    return "tf32" if train.get("allow_tf32", False) else "fp32"


@dataclass
class Pass:
    """One pass over samples inside a job: FLOPs per precision, samples loaded and the loader's rate."""

    stage: str
    flop: dict                      # precision -> FLOPs
    loaded: int = 0                 # samples decoded by the job's DataLoader
    loader: str | None = None       # key of Measured.loader
    repeats: int = 1                # e.g. epochs


@dataclass
class Job:
    name: str
    passes: list
    fixed_s: float
    workers: int
    peak_rss: float
    disk: dict = field(default_factory=dict)   # stage -> bytes
    group: str | None = None                   # the workflow job it belongs to (one per method and seed)
    gpu: bool = True                           # False: a CPU job (the input store) that never holds the GPU
    counted: bool = True                       # False: work done inside another job (an encoder-cache build)
    extra_rss: float = 0.0                     # held on top of the job's peak while it trains beside others (lockstep)


def selection_split(method_name: str, run_cfg: dict):
    from weldfilm.methods import get_method

    return get_method(method_name)(run_cfg, Path(run_cfg["results"]) / "scratch" / "sel", torch.device("cpu")).selection_split


def flops(precision: str, value: float) -> dict:
    return {precision: float(value)}


def checkpoint_bytes(trainable_bytes: float, run_cfg: dict) -> float:
    """best.pt (weights, + EMA) + last.pt (weights, + EMA, + two Adam moments)."""
    ema = 1 if run_cfg["train"].get("use_ema") else 0
    return trainable_bytes * (1 + ema) + trainable_bytes * (1 + ema + 2)


def workflow_splits(cfg: dict) -> list[str]:
    return list(cfg.get("workflow", {}).get("eval_splits", ["val", "test"]))


SLURM_PROFILE = Path(__file__).resolve().parents[1] / "workflow" / "profiles" / "slurm" / "config.yaml"


def slurm_threads(rule: str) -> int:
    """The CPU cores the SLURM profile gives a rule's jobs (``set-threads``; 1 when it names none)."""
    import yaml

    profile = yaml.safe_load(SLURM_PROFILE.read_text()) or {}
    return int((profile.get("set-threads") or {}).get(rule, 1))


def loader_workers(run_cfg: dict, rule: str) -> int:
    """DataLoader workers of a job: ``train.num_workers`` (``auto``: the job's threads minus one, the
    threads being what the SLURM profile gives ``rule``)."""
    chosen = run_cfg["train"].get("num_workers", 0)
    if chosen == "auto":
        return max(0, slurm_threads(rule) - 1)
    return int(chosen)


def train_rule(method: str) -> str:
    """The workflow rule that trains ``method`` (one job per method and seed)."""
    return TRAIN_RULE.format(method=method)


def uses_store(run_cfg: dict) -> bool:
    """Whether the run reads decoded inputs from the memory-mapped input store (``inputs.store``)."""
    return bool((run_cfg.get("inputs") or {}).get("store", False))


def loader_key(run_cfg: dict, decode_key: str) -> str:
    """The measured loader a pass reads through: the decoding one, or its input-store twin."""
    return f"store.{decode_key}" if uses_store(run_cfg) else decode_key


def causal_film_jobs(cfg, runs, m: Measured, splits: dict, a) -> list[Job]:
    """Causal-FiLM runs, their feature-cache builds and, with the input store, nothing decoded in a GPU job.

    The runs of one seed form one workflow job; inside it the runs whose TRAIN stream is the same
    (``weldfilm.run_keys.train_stream_key``: same augmented inputs, order and batches) share one
    frozen-backbone pass and one load per batch, and each adds only its head's cost.
    """
    from weldfilm.methods.causal_film.method import CausalFiLMMethod
    from weldfilm.paths import feature_dir_key

    bb = sum(m.backbones[n]["gflop_per_sample"] for n in ("vjepa2", "ast", "dinov3")) * 1e9
    cache_per_sample = sum(m.backbones[n]["cache_mb_per_sample"] for n in ("vjepa2", "ast", "dinov3")) * 1e6 + \
        m.sizes["cf_cache_bytes_per_sample_extra"]
    bb_bytes = sum(m.backbones[n]["param_bytes"] for n in ("vjepa2", "ast", "dinov3", "clip"))
    jobs, keys, streams = [], {}, set()
    for settings, r in runs:
        if settings["method"] != "causal_film":
            continue
        workers = loader_workers(r, train_rule("causal_film"))
        method = CausalFiLMMethod(r, Path(r["results"]) / "scratch" / "cfj", torch.device("cpu"))
        if r["train"].get("feature_cache", True):
            keys.setdefault(feature_dir_key(r), r)
        head = m.cf_heads[head_key(r)]
        hp, bp = precision_of(r, "head"), precision_of(r, "backbone")
        epochs = r["train"]["epochs"]
        n_train = a.train_normal
        passes, in_memory, needs_backbones = [], 0.0, False
        group = f"causal_film seed{settings['seed']}"

        def pass_of(stage, split, n, head_flop, repeats=1, augmented=False, shared=False):
            nonlocal needs_backbones
            if method.uses_cache(split):
                return Pass(stage, flops(hp, n * head_flop), 0, None, repeats)  # a memory map: page cache, not RSS
            needs_backbones = True
            f = {hp: n * head_flop}
            if not shared:  # the stream's first run passes the batch through the backbones for all of them
                f[bp] = f.get(bp, 0.0) + n * bb
            decode = "causal_film.aug_on" if augmented else "causal_film.aug_off"
            return Pass(stage, f, 0 if shared else n, None if shared else loader_key(r, decode), repeats)

        augmented = method.uses_augmentation()
        stream = (group, stream_key(r)) if not getattr(a, "per_run_jobs", False) else None
        shared = stream is not None and stream in streams
        if stream is not None:
            streams.add(stream)
        decoded_once = augmented and not method.uses_cache("train") and r["train"].get("cache_inputs", False) \
            and "causal_film.aug_only" in m.loader and not uses_store(r)
        step = pass_of("causal_film.train", "train", n_train, head["train_flop"], epochs, augmented, shared)
        if decoded_once:  # train.cache_inputs: files decoded in the first epoch, augmentation only after it
            passes += [Pass(step.stage, step.flop, n_train, step.loader, 1),
                       Pass(step.stage, step.flop, n_train, "causal_film.aug_only", epochs - 1)]
            in_memory += n_train * m.sizes.get("cf_input_bytes_per_sample", 0)
        else:
            passes.append(step)
        selection = method.selection_split
        if selection:
            passes.append(pass_of("causal_film.select", selection, splits[selection], head["score_flop"], epochs))
        for split in workflow_splits(cfg):
            passes.append(pass_of("causal_film.score", split, splits[split], head["score_flop"]))
        fixed = a.job_start_s + (bb_bytes / (a.disk_gbps * 1e9) if needs_backbones else 0.0)
        rss = m.sizes["import_rss"] + in_memory + head["param_bytes"] * 4 + (bb_bytes if needs_backbones else 0)
        jobs.append(Job(f"causal_film {settings}", passes, fixed, workers, rss,
                        {"causal_film.train": checkpoint_bytes(head["param_bytes"], r)}, group=group,
                        # a head trained in lockstep beside the stream's first: weights, grads, Adam, EMA
                        extra_rss=head["param_bytes"] * (4 + bool(r["train"].get("use_ema"))) if shared else 0.0))
    feature_jobs = []
    for key, r in keys.items():
        for split in ("train", "val", "test"):  # the workflow builds every split of a key (common.smk)
            n = splits[split]
            f = flops(precision_of(r, "backbone"), n * bb + m.backbones["clip"]["gflop_per_sample"] * 1e9)
            # build_feature_cache writes batch by batch: one batch of features in memory
            rss = m.sizes["import_rss"] + bb_bytes + r["train"].get("eval_batch_size", 32) * cache_per_sample
            feature_jobs.append(Job(f"features {key} {split}",
                                    [Pass("features", f, n, loader_key(r, "causal_film.aug_off"))],
                                    a.job_start_s + bb_bytes / (a.disk_gbps * 1e9), loader_workers(r, "features"),
                                    rss, {"features": n * cache_per_sample}))
    return feature_jobs + jobs


def stream_key(run_cfg: dict) -> str:
    """The key under which Causal-FiLM runs of one job share a TRAIN pass (the package's own rule)."""
    from weldfilm.run_keys import train_stream_key

    return train_stream_key(run_cfg)


def late_fusion_jobs(cfg, runs, m: Measured, splits: dict, a) -> list[Job]:
    jobs = []
    for settings, r in runs:
        if settings["method"] != "late_fusion":
            continue
        s = r["late_fusion"]
        hp = precision_of(r, "head")
        selection = selection_split("late_fusion", r)
        passes, trainable = [], 0.0
        for branch in ("audio", "video"):
            train = m.components[f"late_fusion.{branch}.train"]["flop_per_sample"]
            score = m.components[f"late_fusion.{branch}.score"]["flop_per_sample"]
            epochs = s[f"{branch}_epochs"]  # the video AE may stop early (patience): an upper bound
            loader = loader_key(r, f"late_fusion.{branch}")
            cached = s["cache_inputs"]  # MemoryCachedDataset: decoded once, then served from memory
            for stage, split, n, f in (("late_fusion.train", "train", a.train_normal, train),
                                       ("late_fusion.select", selection, splits[selection], score)):
                if cached:
                    passes.append(Pass(stage, flops(hp, n * f), n, loader, 1))
                    passes.append(Pass(stage, flops(hp, n * f), 0, None, epochs - 1))
                else:
                    passes.append(Pass(stage, flops(hp, n * f), n, loader, epochs))
            # fusion statistics on TRAIN, then the evaluation splits (the selection split's dataset is reused)
            for split in ["train", *workflow_splits(cfg)]:  # scoring reads the whole split
                n = splits[split]
                reread = not cached or split not in ("train", selection)
                passes.append(Pass("late_fusion.score", flops(hp, n * score), n if reread else 0,
                                   loader if reread else None))
            trainable += m.sizes[f"late_fusion.{branch}.param_bytes"]
        held = 0.0
        if s["cache_inputs"]:
            held = sum(m.sizes[f"late_fusion.{b}.input_bytes"] for b in ("audio", "video")) * (
                a.train_normal + sum(splits[x] for x in {selection, *workflow_splits(cfg)}))
        rss = m.sizes["import_rss"] + trainable * 4 + held + s["batch_size"] * m.sizes["late_fusion.audio.input_bytes"] * 3
        jobs.append(Job(f"late_fusion {settings}", passes, a.job_start_s, loader_workers(r, train_rule("late_fusion")),
                        rss, {"late_fusion.train": checkpoint_bytes(trainable, r)},
                        group=f"late_fusion seed{settings['seed']}"))
    return jobs


def m3dm_jobs(cfg, runs, m: Measured, splits: dict, a) -> list[Job]:
    """M3DM runs: frozen extractor (RGB ViT + point transformer), banks + greedy coreset, scoring.

    ``m3dm.encoder_cache`` on: the extractor runs once per split and point-transformer key (the
    point transformer is seeded by the run seed unless a Point-MAE checkpoint is given), over every
    run of the split, and the jobs read the cache; off: every job runs it on what it reads.
    """
    jobs, builds = [], {}
    bank_score = m.components["m3dm.bank_score"]["flop_per_sample"]

    def extract(r, n) -> dict:  # the RGB ViT under backbone autocast, the point transformer outside it
        f = {precision_of(r, "plain"): n * m.components["m3dm.point"]["flop_per_sample"]}
        bp = precision_of(r, "backbone")
        f[bp] = f.get(bp, 0.0) + n * m.backbones["dino_vitb8"]["gflop_per_sample"] * 1e9
        return f

    for settings, r in runs:
        if settings["method"] != "m3dm":
            continue
        p = r["m3dm"]
        cached = bool(p.get("encoder_cache", False))
        n_bank = min(p["max_train_samples"] or a.train_normal, a.train_normal)
        coreset, bank_bytes, disk = 0.0, 0.0, 0.0
        for key, info in m.sizes["m3dm.coreset"].items():  # greedy k-centre: picks x items x projected dim
            items = n_bank * m.sizes["m3dm.patches_per_run"][key]
            picks = max(1, int(p["f_coreset"] * items))
            width = m.sizes["m3dm.dims"][key]
            dim = min(m.sizes["m3dm.jl_dim_paper"][key], width)
            coreset += info["flop_per_pick_item_dim"] * picks * items * dim
            bank_bytes += items * width * 4
            disk += picks * (width * 4 + 8)
        read = ["train", *workflow_splits(cfg)]
        if cached:
            point_key = "shared" if p["point_mae_checkpoint"] else settings["seed"]
            for split in read:  # one extractor pass writes (or, for a further seed, re-computes) the split's caches
                builds.setdefault((split, point_key), (r, splits[split]))
        passes = [Pass("m3dm.extract", extract(r, 0 if cached else n_bank), 0 if cached else n_bank,
                       None if cached else loader_key(r, "m3dm")),
                  # greedy coreset per bank, then every bank run scored against the banks (fuser fit)
                  Pass("m3dm.bank", flops(precision_of(r, "plain"), coreset + n_bank * bank_score))]
        for split in workflow_splits(cfg):
            n = splits[split]
            f = extract(r, 0 if cached else n)
            plain = precision_of(r, "plain")
            f[plain] = f.get(plain, 0.0) + n * bank_score
            passes.append(Pass("m3dm.score", f, 0 if cached else n, None if cached else loader_key(r, "m3dm")))
        # all bank patches, and their standardised copy, in memory while the coreset runs
        rss = m.sizes["import_rss"] + m.sizes["m3dm.param_bytes"] + 2 * bank_bytes
        jobs.append(Job(f"m3dm {settings}", passes, a.job_start_s + m.backbones["dino_vitb8"]["param_bytes"] /
                        (a.disk_gbps * 1e9), loader_workers(r, train_rule("m3dm")), rss, {"m3dm.bank": disk},
                        group=f"m3dm seed{settings['seed']}"))
    rgb_written = set()
    for (split, point_key), (r, n) in builds.items():  # run inside the first job that needs them: no fixed cost
        kinds = ("point",) if split in rgb_written else ("rgb", "point")  # the RGB cache is shared by every seed
        rgb_written.add(split)
        width = sum(m.sizes["m3dm.dims"][k] * m.sizes["m3dm.patches_per_run"][k] * 4 for k in kinds)
        jobs.append(Job(f"m3dm encoder cache {split} {point_key}",
                        [Pass("m3dm.extract", extract(r, n), n, loader_key(r, "m3dm"))], 0.0,
                        loader_workers(r, train_rule("m3dm")), m.sizes["import_rss"] + m.sizes["m3dm.param_bytes"],
                        {"m3dm.extract": n * width}, group=f"m3dm seed{r['run']['seed']}", counted=False))
    return jobs


def dinomaly_jobs(cfg, runs, m: Measured, splits: dict, a) -> list[Job]:
    """Dinomaly runs: epochs of training + a selection pass each epoch, then scoring.

    The frozen encoder runs inside the head's forward; with ``dinomaly.encoder_cache`` its outputs
    are computed once per split (shared by every seed and protocol) and the passes run the trainable
    part only.
    """
    jobs, builds = [], {}
    train = m.components["dinomaly.train"]["flop_per_sample"]
    score = m.components["dinomaly.score"]["flop_per_sample"]
    encoder = m.backbones["dinov2_reg"]["gflop_per_sample"] * 1e9
    for settings, r in runs:
        if settings["method"] != "dinomaly":
            continue
        s = r["dinomaly"]
        hp, bp = precision_of(r, "head"), precision_of(r, "backbone")
        cached = bool(s.get("encoder_cache", False))
        selection = selection_split("dinomaly", r)
        epochs = s["epochs"]

        def cost(n, total):
            if cached:
                return {hp: n * (total - encoder)}
            return {hp: n * (total - encoder), bp: n * encoder} if hp != bp else {hp: n * total}

        passes = []
        for stage, split, n, f in (("dinomaly.train", "train", a.train_normal, train),
                                   ("dinomaly.select", selection, splits[selection], score)):
            if cached:
                builds.setdefault(split, (r, n))
                passes.append(Pass(stage, cost(n, f), 0, None, epochs))
            elif s["cache_inputs"]:
                passes += [Pass(stage, cost(n, f), n, loader_key(r, "dinomaly"), 1),
                           Pass(stage, cost(n, f), 0, None, epochs - 1)]
            else:
                passes.append(Pass(stage, cost(n, f), n, loader_key(r, "dinomaly"), epochs))
        for split in workflow_splits(cfg):
            if cached:
                builds.setdefault(split, (r, splits[split]))
            reread = not cached and (not s["cache_inputs"] or split != selection)
            passes.append(Pass("dinomaly.score", cost(splits[split], score), splits[split] if reread else 0,
                               loader_key(r, "dinomaly") if reread else None))
        rss = m.sizes["import_rss"] + m.sizes["dinomaly.param_bytes"] + 3 * m.sizes["dinomaly.trainable_param_bytes"]
        jobs.append(Job(f"dinomaly {settings}", passes, a.job_start_s + m.backbones["dinov2_reg"]["param_bytes"] /
                        (a.disk_gbps * 1e9), loader_workers(r, train_rule("dinomaly")), rss,
                        {"dinomaly.train": checkpoint_bytes(m.sizes["dinomaly.trainable_param_bytes"], r)},
                        group=f"dinomaly seed{settings['seed']}"))
    for split, (r, n) in builds.items():
        # per image: the bottleneck input and each layer group's target, fp32 (fp16 with feature_cache_dtype)
        item = 2 if r["train"].get("feature_cache_dtype", "fp32") == "fp16" else 4
        per_run = m.sizes["dinomaly.images_per_run"] * (len(r["dinomaly"]["layer_groups"] or [[0], [1]]) + 1) * \
            m.sizes["dinomaly.tokens_per_image"] * m.sizes["dinomaly.dim"] * item
        jobs.append(Job(f"dinomaly encoder cache {split}",
                        [Pass("dinomaly.encode", flops(precision_of(r, "backbone"), n * encoder), n,
                              loader_key(r, "dinomaly"))],
                        0.0, loader_workers(r, train_rule("dinomaly")),
                        m.sizes["import_rss"] + m.sizes["dinomaly.param_bytes"],
                        {"dinomaly.encode": n * per_run}, group=f"dinomaly seed{r['run']['seed']}",
                        counted=False))
    return jobs


def peak_flops(precision: str, a) -> float:
    tflops = {"bf16": a.gpu_tflops, "fp16": a.gpu_tflops, "tf32": a.gpu_tf32_tflops, "fp32": a.gpu_fp32_tflops}
    return tflops[precision] * 1e12 * a.utilization


def grouped(jobs: list[Job], per_run: bool) -> list[Job]:
    """The workflow's jobs: the runs of one method and seed in one job (its start and weights paid once,
    its peak the largest of its runs'); ``per_run``: every run a job of its own (before the grouping)."""
    out, groups = [], {}
    for job in jobs:
        if per_run or job.group is None:
            out.append(job)
            continue
        if job.group not in groups:
            groups[job.group] = Job(job.group, [], 0.0, job.workers, 0.0, {}, group=job.group, counted=True)
            out.append(groups[job.group])
        g = groups[job.group]
        g.passes += job.passes
        g.fixed_s = max(g.fixed_s, job.fixed_s)
        g.peak_rss = max(g.peak_rss, job.peak_rss)
        g.extra_rss += job.extra_rss
        for stage, value in job.disk.items():
            g.disk[stage] = g.disk.get(stage, 0.0) + value
    return out


def job_rule(job: Job) -> str:
    """The workflow rule a projected job is an instance of."""
    if not job.gpu:
        return "inputs"
    if job.name.startswith("features"):
        return "features"
    return "train_" + (job.group or job.name).split()[0]


def project_dag(cfg: dict, m: Measured, a) -> dict:
    """The full paper DAG on one GPU: per stage PFLOP, GPU-hours of compute, hours held, peak RSS, disk.

    CPU jobs (the input store) never hold the GPU: their hours are wall hours on their own cores,
    overlapping the GPU jobs, and are left out of the GPU total.
    """
    runs = all_runs(cfg)
    splits = dict(PAPER_SPLITS)
    jobs = (causal_film_jobs(cfg, runs, m, splits, a) + late_fusion_jobs(cfg, runs, m, splits, a)
            + m3dm_jobs(cfg, runs, m, splits, a) + dinomaly_jobs(cfg, runs, m, splits, a))
    jobs = grouped(jobs, getattr(a, "per_run_jobs", False)) + input_store_jobs(cfg, runs, m, splits, a)
    stages: dict[str, dict] = {}
    feeds: dict[str, dict] = {}  # stage -> the pass whose loader keeps up with its GPU work the least
    rules: dict[str, dict] = {}  # workflow rule -> jobs, longest job (h), largest peak RSS (GB)
    for job in jobs:
        job_hours = job.fixed_s / 3600
        for index, step in enumerate(job.passes):
            st = stages.setdefault(step.stage, {"pflop": 0.0, "gpu_hours_compute": 0.0, "hours_held": 0.0,
                                                "peak_rss_gb": 0.0, "disk_gb": 0.0, "jobs": set(), "precision": set(),
                                                "gpu": job.gpu})
            compute = sum(v / peak_flops(p, a) for p, v in step.flop.items())
            load = step.loaded / m.loader[step.loader] if step.loader else 0.0
            # num_workers 0: the training process decodes, then computes; workers overlap the two
            per_pass = compute + load if job.workers == 0 else max(compute, load / job.workers)
            if step.loader and step.loader.startswith("store."):  # the store's disk bounds its readers
                read = step.loaded * m.sizes.get(f"store_read_bytes.{step.loader[len('store.'):]}", 0.0)
                per_pass = max(per_pass, read / (a.store_gbps * 1e9))
            job_hours += per_pass * step.repeats / 3600
            if step.loader and step.loaded and compute > 0:
                feed = m.loader[step.loader] * max(1, job.workers)  # samples/s the loader can give
                if step.loader.startswith("store."):
                    per_sample = m.sizes.get(f"store_read_bytes.{step.loader[len('store.'):]}", 0.0)
                    if per_sample:
                        feed = min(feed, a.store_gbps * 1e9 / per_sample)
                need = step.loaded / compute  # samples/s the GPU would consume
                if step.stage not in feeds or per_pass * step.repeats / 3600 > feeds[step.stage]["pass_hours"]:
                    feeds[step.stage] = {"loader": step.loader, "workers": job.workers, "gpu_samples_per_s": need,
                                         "loader_samples_per_s": feed, "ratio": feed / need,
                                         "pass_hours": per_pass * step.repeats / 3600}
            st["pflop"] += sum(step.flop.values()) * step.repeats / 1e15
            st["gpu_hours_compute"] += compute * step.repeats / 3600
            st["hours_held"] += per_pass * step.repeats / 3600
            st["jobs"].add(job.name)
            st["precision"].update(step.flop)
        first = job.passes[0].stage
        stages[first]["hours_held"] += job.fixed_s / 3600
        for stage in {step.stage for step in job.passes}:
            stages[stage]["peak_rss_gb"] = max(stages[stage]["peak_rss_gb"], (job.peak_rss + job.extra_rss) / 1e9)
        if job.counted:
            rule = rules.setdefault(job_rule(job), {"jobs": 0, "longest_job_hours": 0.0, "peak_rss_gb": 0.0})
            rule["jobs"] += 1
            rule["longest_job_hours"] = max(rule["longest_job_hours"], job_hours)
            rule["peak_rss_gb"] = max(rule["peak_rss_gb"], (job.peak_rss + job.extra_rss) / 1e9)
        for stage, value in job.disk.items():
            stages[stage]["disk_gb"] += value / 1e9
    for st in stages.values():
        st["jobs"] = len(st["jobs"])
        st["precision"] = "+".join(sorted(st["precision"])) or "—"
    counts = {"runs": len(runs), "jobs": sum(job.gpu and job.counted for job in jobs),
              "cpu_jobs": sum(not job.gpu for job in jobs),
              "per_method": {meth: sum(s["method"] == meth and not s["ablation"] for s, _ in runs)
                             for meth in cfg["methods"]},
              "ablation_runs": sum(bool(s["ablation"]) for s, _ in runs),
              "seeds": len(cfg["seeds"]), "protocols": list(cfg["protocols"]), "ablations": len(cfg["ablations"]),
              "per_run_jobs": bool(getattr(a, "per_run_jobs", False))}
    gpu_stages = [s for s in stages.values() if s["gpu"]]
    return {"stages": stages, "counts": counts, "splits": splits, "feeds": feeds, "rules": rules,
            "total_pflop": sum(s["pflop"] for s in gpu_stages),
            "total_gpu_hours_compute": sum(s["gpu_hours_compute"] for s in gpu_stages),
            "total_gpu_hours_held": sum(s["hours_held"] for s in gpu_stages),
            "total_cpu_job_hours": sum(s["hours_held"] for s in stages.values() if not s["gpu"])}


def input_store_jobs(cfg: dict, runs, m: Measured, splits: dict, a) -> list[Job]:
    """The ``inputs`` rule's CPU jobs: one per kind of the input store that a run or its feature-cache build
    reads (as workflow/rules/common.smk ``input_kinds``), decoding every split in turn, with the rule's
    threads as DataLoader workers; disk = what the kind stores per run."""
    if not any(uses_store(r) for _, r in runs):
        return []
    from weldfilm.data import store

    kinds: dict[str, tuple[dict, list[str]]] = {}  # name -> (spec, its splits)
    for _, r in runs:
        if not uses_store(r):
            continue
        for by_split in (store.run_input_kinds(r), store.feature_input_kinds(r, splits=list(splits))):
            for kind in (kind for specs in by_split.values() for kind in specs):
                kinds.setdefault(store.kind_name(kind), (kind, list(splits)))
    jobs = []
    threads = slurm_threads("inputs")
    for name, (kind, kind_splits) in kinds.items():
        label = store.kind_label(kind)
        if f"inputs.{label}" not in m.loader:
            raise SystemExit(f"the measurement holds no input-store kind {label}: measure again "
                             "(without --from-json) for this config")
        n = sum(splits[split] for split in kind_splits)
        jobs.append(Job(f"inputs {name}", [Pass("inputs (CPU)", {}, splits[split], f"inputs.{label}") for split in kind_splits],
                        a.job_start_s, threads, m.sizes["import_rss"],
                        {"inputs (CPU)": n * m.sizes[f"store_bytes.{label}"]}, gpu=False))
    return jobs


# ================================================================================================ part 4: output
def assumptions(cfg: dict, a) -> dict:
    base = cfg["train"]
    return {"gpu_tflops_bf16": a.gpu_tflops, "gpu_tflops_tf32": a.gpu_tf32_tflops, "gpu_tflops_fp32": a.gpu_fp32_tflops,
            "gpu_name": a.gpu_name, "utilization": a.utilization, "gpus": 1, "serial_jobs": True,
            "num_workers": base.get("num_workers", 0),
            "workers_per_train_job": loader_workers(cfg, train_rule("causal_film")),
            "per_run_jobs": bool(getattr(a, "per_run_jobs", False)),
            "mixed_precision": base.get("mixed_precision", False),
            "amp_dtype": base.get("amp_dtype"), "disk_gbps": a.disk_gbps, "job_start_s": a.job_start_s,
            "store_gbps": getattr(a, "store_gbps", None),
            "train_normal_runs": a.train_normal, "epochs": "as configured (early stopping not modelled: upper bound)",
            "loader_rate": "measured per worker on this machine (see loader)"}


def behaviour(cfg: dict) -> dict:
    """The config switches the cost model reads, per protocol where protocols differ (shown with the table)."""
    out = {}
    for protocol in cfg["protocols"]:
        from weldfilm.config import run_config

        r = run_config(cfg, "causal_film", cfg["seeds"][0], protocol)
        out[protocol] = {
            "causal_film augments TRAIN (train.use_augmentations)": bool(r["train"]["use_augmentations"]),
            "feature cache (train.feature_cache)": bool(r["train"].get("feature_cache", True)),
            "augmented runs decoded once (train.cache_inputs)": bool(r["train"].get("cache_inputs", False)),
            "frozen backbones (train.backbone_precision)": precision_of(r, "backbone"),
            "heads (train.mixed_precision, amp_dtype, allow_tf32)": precision_of(r, "head"),
            "loader workers (train.num_workers; auto = the SLURM profile's threads - 1)":
                f"{r['train'].get('num_workers', 0)} -> {loader_workers(r, train_rule('causal_film'))}",
            "decoded inputs read from the input store (inputs.store)": uses_store(r),
            "Late Fusion inputs kept (late_fusion.cache_inputs)": bool(r["late_fusion"]["cache_inputs"]),
            "M3DM encoder cache (m3dm.encoder_cache)": bool(r["m3dm"].get("encoder_cache", False)),
            "Dinomaly encoder cache (dinomaly.encoder_cache)": bool(r["dinomaly"].get("encoder_cache", False)),
            "Dinomaly inputs kept (dinomaly.cache_inputs)": bool(r["dinomaly"]["cache_inputs"]),
            "selection split (train.selection_split)": r["train"]["selection_split"]}
    return out


def result_dict(cfg, m: Measured, proj: dict, a, elapsed_s: float) -> dict:
    return {
        "total_gpu_hours_compute": proj["total_gpu_hours_compute"],
        "total_gpu_hours_held": proj["total_gpu_hours_held"],
        "total_cpu_job_hours": proj.get("total_cpu_job_hours", 0.0),
        "total_pflop": proj["total_pflop"],
        "gpu": assumptions(cfg, a),
        "stages": {name: {k: v for k, v in st.items()} for name, st in sorted(proj["stages"].items())},
        "feeds": proj.get("feeds", {}), "rules": proj.get("rules", {}),
        "backbones": {name: {"gflop_per_sample": m.backbones[name]["gflop_per_sample"],
                             "cache_mb_per_sample": m.backbones[name]["cache_mb_per_sample"],
                             "cpu_s_per_sample": m.backbones[name]["cpu_s_per_sample"],
                             "params_m": m.backbones[name]["params"] / 1e6,
                             "tokens": m.backbones[name].get("tokens"), "class": m.backbones[name].get("class"),
                             "note": m.backbones[name].get("note", "")}
                      for name in BACKBONES},
        "components": m.components,
        "causal_film_heads": m.cf_heads,
        "loader_samples_per_s_per_worker": m.loader,
        "measured_peak_rss_gb": {k: v / 1e9 for k, v in m.peaks.items()},
        "counts": proj["counts"], "splits": proj["splits"],
        "measured": {"runs": m.runs, "profile": "default (quick)" if a.quick else a.profile,
                     "torch_threads": torch.get_num_threads(), "seconds": elapsed_s,
                     "data_mb_per_run": m.sizes["data_bytes_per_run"] / 1e6},
        "command": a.command,
        "label": getattr(a, "label", None),
        "behaviour": behaviour(cfg),
        # everything part 3 reads, so that ``--from-json`` re-projects with another config or code
        "measured_inputs": {"runs": m.runs, "backbones": m.backbones, "components": m.components, "loader": m.loader,
                            "peaks": m.peaks, "sizes": m.sizes, "cf_heads": m.cf_heads},
    }


def markdown(result: dict, baseline: dict | list | None) -> str:
    """The generated docs/paper-scale.md; ``baseline``: one earlier result or a list of them (the first is
    the per-stage "before"; each gets a row in the before/after totals)."""
    baselines = baseline if isinstance(baseline, list) else ([baseline] if baseline else [])
    baseline = baselines[0] if baselines else None
    g = result["gpu"]
    lines = ["# The paper profile at scale (generated)", "",
             f"Generated by `{result['command']}` ({result['measured']['seconds'] / 60:.1f} min on this machine, "
             f"{result['measured']['torch_threads']} torch threads, {result['measured']['runs']} measured runs, "
             f"profile `{result['measured']['profile']}`). Random-init backbones of the real transformers classes at "
             f"{'tiny' if 'quick' in result['measured']['profile'] else 'paper'} size (`weldfilm.models.sizes`), called "
             "through weldfilm's own code (FrozenBackbones, the Causal-FiLM head, Late Fusion's autoencoders, M3DM's "
             "extractor/bank/coreset, Dinomaly's head) on synthetic runs in the real layout (192 kHz audio, 30 fps video, "
             f"5 photos; {result['measured']['data_mb_per_run']:.0f} MB a run) read at the profile's sizes; FLOPs from `torch.utils.flop_counter.FlopCounterMode` (plus CPU attention and cdist, which it "
             "has no formula for); loader rates measured on this machine (2 shared cores: rough).", "",
             f"**GPU assumptions:** one {g['gpu_name']}, {g['gpu_tflops_bf16']:g} TFLOPS bf16/fp16, "
             f"{g['gpu_tflops_tf32']:g} TF32, {g['gpu_tflops_fp32']:g} fp32 (dense), at {g['utilization']:.0%} "
             f"utilization; every GPU job serial (`--resources gpu=1`); "
             f"{'every run a job of its own' if g.get('per_run_jobs') else 'one train job per method and seed (runs with the same TRAIN stream share its pass)'}; "
             f"loader at `num_workers: {g['num_workers']}` = {g.get('workers_per_train_job', g['num_workers'])} workers per train job "
             f"({'in the training process, so decoding adds to compute' if not g.get('workers_per_train_job', g['num_workers']) else 'workers overlap compute'}); "
             f"mixed_precision {g['mixed_precision']}; job start {g['job_start_s']:g} s + weights read at "
             f"{g['disk_gbps']:g} GB/s; "
             + (f"the input store read at most at {g['store_gbps']:g} GB/s per job (a local NVMe, not the page cache); "
                if g.get("store_gbps") else "")
             + "every configured epoch run (early stopping not modelled).", "",
             f"**Total: {result['total_pflop']:,.0f} PFLOP, {result['total_gpu_hours_compute']:.1f} GPU-hours of compute, "
             f"{result['total_gpu_hours_held']:.1f} hours of GPU held** ({result['counts']['runs']} runs, "
             f"{result['counts']['jobs']} GPU jobs; splits TRAIN {result['splits']['train']} / VAL "
             f"{result['splits']['val']} / TEST {result['splits']['test']})"
             + (f"; besides, {result['counts']['cpu_jobs']} CPU jobs fill the input store in "
                f"{result['total_cpu_job_hours']:.2f} h of wall time on their own cores, beside the GPU jobs."
                if result["counts"].get("cpu_jobs") else "."), "",
             "## Per backbone (one sample = one weld run as the method calls the backbone)", "",
             "| backbone | class | params (M) | output per sample | GFLOP/sample | cache MB/sample | CPU s/sample | note |",
             "|---|---|---|---|---|---|---|---|"]
    flags = next(iter((result.get("behaviour") or {"": {}}).values()))
    m3dm_cache = flags.get("M3DM encoder cache (m3dm.encoder_cache)")
    dinomaly_cache = flags.get("Dinomaly encoder cache (dinomaly.encoder_cache)")
    notes = {"vjepa2": "Causal-FiLM video clip; cached with the features",
             "ast": "Causal-FiLM mel, stretched to the checkpoint's input; cached with the features",
             "dinov3": "Causal-FiLM: every view, the two result layers kept; cached with the features",
             "clip": "the prompt: once per cache file or job, not per run",
             "dino_vitb8": "M3DM: the first photo (its point transformer: m3dm.extract)"
                           + (f"; encoder cache {m3dm_cache}" if m3dm_cache is not None else ""),
             "dinov2_reg": "Dinomaly: every photo of a run, blocks up to the last layer group"
                           + (f"; encoder cache {dinomaly_cache}" if dinomaly_cache is not None else "")}
    for name, b in result["backbones"].items():
        lines.append(f"| {name} | {b['class']} | {b['params_m']:.1f} | {b['tokens']} | {b['gflop_per_sample']:,.1f} | "
                     f"{b['cache_mb_per_sample']:.2f} | {b['cpu_s_per_sample']:.2f} | {notes.get(name, '')} |")
    if result.get("behaviour"):
        protocols = list(result["behaviour"])
        lines += ["", "## What the projected runs do (read from the config)", "",
                  "| setting | " + " | ".join(protocols) + " |", "|---|" + "---|" * len(protocols)]
        for key in result["behaviour"][protocols[0]]:
            lines.append(f"| {key} | " + " | ".join(str(result["behaviour"][p][key]) for p in protocols) + " |")
    lines += ["", "## Per stage of the paper DAG", ""]
    before = (baseline or {}).get("stages", {})
    if before:
        lines += ["| stage | jobs | precision | PFLOP before → after | GPU-h compute before → after | "
                  "hours held before → after | peak RSS GB before → after | disk GB before → after |",
                  "|---|---|---|---|---|---|---|---|"]
    else:
        lines += ["| stage | jobs | precision | PFLOP | GPU-h compute | hours held | peak RSS GB | disk GB |",
                  "|---|---|---|---|---|---|---|---|"]
    keys = ("pflop", "gpu_hours_compute", "hours_held", "peak_rss_gb", "disk_gb")
    for name in sorted(set(result["stages"]) | set(before)):
        st = result["stages"].get(name, {})
        cells = []
        for key in keys:
            now = f"{st[key]:,.2f}" if key in st else "—"
            cells.append(f"{before[name][key]:,.2f} → {now}" if before and name in before else
                         (f"— → {now}" if before else now))
        lines.append(f"| {name} | {st.get('jobs', '—')} | {st.get('precision', '—')} | " + " | ".join(cells) + " |")
    total = f"| **total** | {result['counts']['jobs']} | | {result['total_pflop']:,.1f} | " \
            f"{result['total_gpu_hours_compute']:,.2f} | {result['total_gpu_hours_held']:,.2f} | | " \
            f"{sum(s['disk_gb'] for s in result['stages'].values()):,.1f} |"
    if before:
        total = (f"| **total** | {result['counts']['jobs']} | | {baseline['total_pflop']:,.1f} → {result['total_pflop']:,.1f} | "
                 f"{baseline['total_gpu_hours_compute']:,.2f} → {result['total_gpu_hours_compute']:,.2f} | "
                 f"{baseline['total_gpu_hours_held']:,.2f} → {result['total_gpu_hours_held']:,.2f} | | |")
    lines += [total]
    if result.get("feeds"):
        lines += ["", "## Does loading keep up? (per stage, its longest loading pass)", "",
                  "| stage | loader | workers | GPU consumes samples/s | loader gives samples/s | loader / GPU | "
                  "hours held by that pass in one job |", "|---|---|---|---|---|---|---|"]
        for stage, f in sorted(result["feeds"].items()):
            lines.append(f"| {stage} | {f['loader']} | {f['workers']} | {f['gpu_samples_per_s']:,.1f} | "
                         f"{f['loader_samples_per_s']:,.1f} | {f['ratio']:.2f} | {f.get('pass_hours', 0.0):.2f} |")
        lines += ["", "A ratio below 1 is a stage whose GPU waits for its inputs; the loader's rate is the measured "
                  "per-worker rate times the job's workers, for `store.*` capped by the store's disk (`--store-gbps`). "
                  "Late Fusion's autoencoders are so small that no loader feeds them as fast as the GPU computes: "
                  "their hours are the store's read time of the 34 MB STFT of every TRAIN and selection run each epoch."]
    if result.get("rules"):
        lines += ["", "## Per workflow job (what the SLURM profile's runtime and mem_mb are sized from)", "",
                  "| rule | jobs | longest job, h | peak RSS, GB |", "|---|---|---|---|"]
        for rule, info in sorted(result["rules"].items()):
            lines.append(f"| {rule} | {info['jobs']} | {info['longest_job_hours']:.2f} | {info['peak_rss_gb']:.1f} |")
    if baselines:
        lines += ["", "## Before and after (the same measurement, projected for each state of the config and workflow)", "",
                  "| state | GPU jobs | PFLOP | GPU-h compute | hours of GPU held | CPU-job hours (input store) |",
                  "|---|---|---|---|---|---|"]
        for item in [*baselines, result]:
            lines.append(f"| {item.get('label') or item['command']} | {item['counts']['jobs']} | {item['total_pflop']:,.0f} | "
                         f"{item['total_gpu_hours_compute']:,.2f} | {item['total_gpu_hours_held']:,.2f} | "
                         f"{item.get('total_cpu_job_hours', 0.0):,.2f} |")
        lines += ["", "Each row re-projects the same measurement: " + "; ".join(
            f"`{item['command'].split('` then `')[-1]}`" for item in [*baselines, result]) + "."]
    lines += ["", "## Measured on this machine", "",
              "| loader (one worker: decoding the files, `store.` reading the input store, `inputs.` filling it) | samples/s |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in result["loader_samples_per_s_per_worker"].items()]
    load = result.get("measured_inputs", {}).get("sizes", {}).get("load_average_at_start")
    if load is not None:
        lines += ["", f"Load average when the measurement started: {load:.1f} on "
                  f"{os.cpu_count()} cores (loader rates and CPU seconds scale with it)."]
    lines += ["", "| component | GFLOP/sample | CPU s/sample | note |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['flop_per_sample'] / 1e9:,.2f} | {v['cpu_s_per_sample']:.2f} | {v.get('note', '')} |"
              for k, v in result["components"].items()]
    heads = result["causal_film_heads"]
    lines += ["", f"Causal-FiLM heads ({len(heads)} distinct configs over protocols and ablations): "
              + ", ".join(f"{h['params'] / 1e6:.1f} M params / {h['train_flop'] / 1e9:.1f} GFLOP train / "
                          f"{h['score_flop'] / 1e9:.1f} score" for h in list(heads.values())[:1])
              + f" (base); training GFLOP/sample across variants {min(h['train_flop'] for h in heads.values()) / 1e9:.1f}"
              f"–{max(h['train_flop'] for h in heads.values()) / 1e9:.1f}.", "",
              "Peak RSS of the measurement steps (GB): " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                                   result["measured_peak_rss_gb"].items()) + ".", "",
              "How the projection counts (benchmarks/paper_scale.py, part 3): the runs are methods x seeds x protocols "
              "and ablations x seeds; the runs of one method and seed are one serial GPU job (its start and weights paid "
              "once), and Causal-FiLM runs of one job that read the same TRAIN stream (`weldfilm.run_keys."
              "train_stream_key`) share one frozen-backbone pass and one load per batch; per epoch each run does what the code "
              "does (Causal-FiLM with augmentation passes TRAIN through V-JEPA2 + AST + DINOv3; cached splits read the "
              "feature cache; the selection split is scored every epoch; Late Fusion and Dinomaly re-read their inputs "
              "every epoch unless their `cache_inputs` keeps them; M3DM and Dinomaly run their frozen encoders once per "
              "split with their `encoder_cache` on (M3DM: per split and point-transformer seed), in every job without); "
              "a pass loads through the measured loader — decoding the files, or reading the input store (`inputs.store`) "
              "— at its rate per worker times the job's workers, overlapping compute (without workers the two add up); "
              "the input store's `inputs` jobs run on CPU cores beside the GPU jobs; the feature-cache jobs are those of "
              "the workflow (every split of each feature key) and write batch by batch (caches are read memory-mapped); "
              "peak RSS and disk are projected at full split sizes. `--from-json` re-projects a stored measurement with "
              "the current config and code (`--set` and `--per-run-jobs` project another state of them); `--baseline` "
              "shows before → after per stage.", ""]
    return "\n".join(lines)


def print_summary(result: dict) -> None:
    g = result["gpu"]
    print(f"\nPer backbone (one sample = one weld run as the method calls it):")
    print(f"{'backbone':<12}{'GFLOP/sample':>14}{'cache MB':>10}{'CPU s':>8}")
    for name, b in result["backbones"].items():
        print(f"{name:<12}{b['gflop_per_sample']:>14,.1f}{b['cache_mb_per_sample']:>10.2f}{b['cpu_s_per_sample']:>8.2f}")
    print(f"\nProjection of the paper DAG ({result['counts']['runs']} runs, {result['counts']['jobs']} serial GPU jobs) "
          f"on one {g['gpu_name']}: {g['gpu_tflops_bf16']:g} TFLOPS bf16, {g['gpu_tflops_fp32']:g} fp32, "
          f"{g['utilization']:.0%} utilization, num_workers {g['num_workers']}:")
    print(f"{'stage':<22}{'jobs':>5}{'precision':>11}{'PFLOP':>11}{'GPU-h':>9}{'held h':>9}{'RSS GB':>8}{'disk GB':>9}")
    for name, st in result["stages"].items():
        print(f"{name:<22}{st['jobs']:>5}{st['precision']:>11}{st['pflop']:>11,.1f}{st['gpu_hours_compute']:>9.2f}"
              f"{st['hours_held']:>9.2f}{st['peak_rss_gb']:>8.1f}{st['disk_gb']:>9.1f}")
    print(f"{'total':<22}{'':>16}{result['total_pflop']:>11,.1f}{result['total_gpu_hours_compute']:>9.2f}"
          f"{result['total_gpu_hours_held']:>9.2f}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="synthetic runs measured (default 2)")
    parser.add_argument("--json", default=None, help="write the result as JSON here")
    parser.add_argument("--markdown", default="docs/paper-scale.md", help="Markdown table ('' = none)")
    parser.add_argument("--baseline", nargs="*", default=[],
                        help="earlier --json results: the stage table shows the first -> this one; a totals table "
                             "lists each")
    parser.add_argument("--label", default=None, help="a name for this state of the config/workflow (tables)")
    parser.add_argument("--config", default=None, help="config.yaml (default: the project's)")
    parser.add_argument("--profile", default="paper", help="config profile to measure and project (default paper)")
    parser.add_argument("--quick", action="store_true", help="tiny backbones, default-profile sizes, small files")
    parser.add_argument("--gpu-name", default="H100-class GPU (H100 SXM datasheet, dense)")
    parser.add_argument("--gpu-tflops", type=float, default=H100_BF16_TFLOPS, help="bf16/fp16 dense peak TFLOPS")
    parser.add_argument("--gpu-tf32-tflops", type=float, default=H100_TF32_TFLOPS, help="TF32 dense peak TFLOPS")
    parser.add_argument("--gpu-fp32-tflops", type=float, default=H100_FP32_TFLOPS, help="fp32 (no TF32) peak TFLOPS")
    parser.add_argument("--utilization", type=float, default=0.35, help="fraction of peak reached (default 0.35)")
    parser.add_argument("--disk-gbps", type=float, default=1.0, help="weights read rate at job start, GB/s")
    parser.add_argument("--job-start-s", type=float, default=20.0, help="fixed start cost of a job (imports), s")
    parser.add_argument("--store-gbps", type=float, default=2.0,
                        help="read rate of the input store's disk, GB/s, shared by a job's workers (default 2: a "
                             "local NVMe; the page cache, where the split fits, is faster)")
    parser.add_argument("--train-normal", type=int, default=PAPER_SPLITS["train"],
                        help="normal TRAIN runs (paper: all 576 TRAIN runs are good)")
    parser.add_argument("--duration-s", type=float, default=None, help="synthetic run length (default 10; quick 1)")
    parser.add_argument("--video-size", type=int, default=None, help="synthetic video frame side (default 256)")
    parser.add_argument("--photo-size", type=int, default=None, help="synthetic photo side (default 1024)")
    parser.add_argument("--keep", default=None, help="work in this folder and keep it")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="dotted config overrides of the projected config (e.g. a 'before' state: "
                             "train.num_workers=0 inputs.store=false)")
    parser.add_argument("--per-run-jobs", action="store_true",
                        help="project every run as a job of its own with no shared TRAIN pass (the workflow "
                             "before one job per method and seed)")
    parser.add_argument("--from-json", default=None,
                        help="no measurement: re-project the measured figures stored in an earlier --json with the "
                             "current config and code (an older file without them is only re-rendered)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    args.duration_s = args.duration_s or (1.0 if args.quick else 10.0)
    args.video_size = args.video_size or (64 if args.quick else 256)
    args.photo_size = args.photo_size or (256 if args.quick else 1024)
    import shlex

    args.command = "python benchmarks/paper_scale.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    return args


def from_json(args) -> dict:
    """An earlier result, re-projected with the current config and code from its stored measurement."""
    stored = json.loads(Path(args.from_json).read_text())
    root = Path(tempfile.mkdtemp(prefix="weldfilm_paper_scale_"))
    try:
        cfg = load_benchmark_config(args.config, args.profile, args.quick, root, args.set)
        inputs = stored.get("measured_inputs")
        if inputs is None:  # written before measured_inputs existed: render as stored
            log(f"{args.from_json} holds no measured inputs: rendered as stored, not re-projected")
            return {**stored, "command": f"{stored['command']}` then rendered by `{args.command}"}
        m = Measured(**inputs)
        if any(k.startswith("store_bytes.") for k in m.sizes):
            from weldfilm.config import run_config

            store_read_bytes({method: run_config(cfg, method, cfg["seeds"][0], "fair")
                              for method in ("causal_film", "late_fusion", "m3dm", "dinomaly")}, m)
        projection = project_dag(cfg, m, args)
        args.command = f"{stored['command']}` then `{args.command}"
        result = result_dict(cfg, m, projection, args, stored["measured"]["seconds"])
        result["measured"] = stored["measured"]
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.from_json:
        result = from_json(args)
        print_summary(result)
        write_outputs(result, args)
        return result
    started = time.perf_counter()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="weldfilm_paper_scale_"))
    try:
        cfg = load_benchmark_config(args.config, args.profile, args.quick, root, args.set)
        measured = measure(cfg, args)
        log("projecting the paper DAG")
        projection = project_dag(cfg, measured, args)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    result = result_dict(cfg, measured, projection, args, time.perf_counter() - started)
    print_summary(result)
    write_outputs(result, args)
    print(f"\nbenchmark took {result['measured']['seconds'] / 60:.1f} min", file=sys.stderr)
    return result


def write_outputs(result: dict, args) -> None:
    if args.json:
        from weldfilm.io import write_json

        write_json(Path(args.json), result)
    if args.markdown:
        from weldfilm.io import write_text

        baselines = [json.loads(Path(path).read_text()) for path in args.baseline]
        write_text(Path(args.markdown), markdown(result, baselines) + "\n")


if __name__ == "__main__":
    main()
