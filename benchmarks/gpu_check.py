"""GPU check of the paper profile: backbone throughput, the Mamba CUDA kernels, one Causal-FiLM training step.

One script, meant to finish within 8 minutes on one H100/H200 (``--budget-s``, default 420, skips what
is left once spent). It measures, and prints as tables:

1. **Backbones.** The six paper-size random-init backbones (``weldfilm.models.sizes.build_random_backbone``,
   the published architectures) called as weldfilm calls them, at the paper profile's shapes:
   ``FrozenBackbones.video_tokens`` (V-JEPA2 ViT-L, 32 frames of 64 px), ``audio_tokens`` (AST 14-14, a
   64 x 256 mel stretched to 1024 x 128), ``image_tokens`` (DINOv3 ViT-H+/16, 5 views of 224 px, hidden
   states ``causal_film.result_layers``), ``text_embedding`` (CLIP B/32 text, the prompt), M3DM's RGB call
   of DINO ViT-B/8 (224 px, final-norm tokens) and Dinomaly's encoder call of DINOv2-reg B/14 (392 px, all
   hidden states). For fp32 and for bf16 autocast: samples/s (a sample = one weld run as the method calls
   the backbone: DINOv3 = all 5 views) and achieved TFLOP/s, with FLOPs per sample counted by
   ``torch.utils.flop_counter.FlopCounterMode`` at batch 1.
2. **Mamba.** The sensor encoder's Mamba mixer on the device against weldfilm's CPU selective scan
   (``SelectiveScanMixer``, fp32) on the same weights, max |difference|: transformers' ``MambaMixer``
   (what ``MambaBlock`` uses on CUDA with mamba-ssm; eval and training path), weldfilm's
   ``SelectiveScanMixer`` on the device and, when mamba-ssm is installed, its ``mamba_inner_fn`` called
   directly. Without mamba-ssm the output says so and the MambaMixer rows are transformers' torch path.
3. **Causal-FiLM training step** at the paper sizes (``profiles.paper``: d_model 512, ...) on feature
   batches of the paper token shapes, fp32 and bf16 autocast: seconds per step and peak device memory.

Usage: ``python benchmarks/gpu_check.py [--json PATH] [--device cuda|cpu] [--quick]``. Without CUDA and
with ``--device cuda`` (the default) it prints a message and exits 0. ``--device cpu --quick`` runs the
same code on CPU with 1-layer backbones and batch 1 (a smoke test: ~1 minute of CPU, 2-3 on a busy machine).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

BACKBONE_ORDER = ("vjepa2", "ast", "dinov3", "clip", "dino_vitb8", "dinov2_reg")
FULL_BATCH = {"vjepa2": 32, "ast": 32, "dinov3": 8, "clip": 1, "dino_vitb8": 32, "dinov2_reg": 16}
CALLS = {"vjepa2": "FrozenBackbones.video_tokens, 32 x 64 px frames",
         "ast": "FrozenBackbones.audio_tokens, 64x256 mel -> 1024x128",
         "dinov3": "FrozenBackbones.image_tokens, 5 views x 224 px",
         "clip": "FrozenBackbones.text_embedding, the prompt",
         "dino_vitb8": "M3DM RGB call, 224 px",
         "dinov2_reg": "Dinomaly encoder call, 392 px"}
QUICK_LAYERS = 1  # --quick: every backbone 1 layer deep (result_layers [0, 1])


class Budget:
    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def spent(self) -> bool:
        return self.elapsed() > self.seconds


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def precision_context(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def time_per_call(fn, device: torch.device, min_iters: int, min_seconds: float, max_iters: int = 50,
                  warmup: bool = True) -> float:
    """Seconds per call after one warm-up call: at least ``min_iters`` calls and ``min_seconds``."""
    if warmup:
        fn()
    sync(device)
    iters, start = 0, time.perf_counter()
    while iters < min_iters or (time.perf_counter() - start < min_seconds and iters < max_iters):
        fn()
        iters += 1
        if iters >= min_iters:
            sync(device)
    sync(device)
    return (time.perf_counter() - start) / iters


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def paper_run_config() -> dict:
    """The Causal-FiLM run config of the ``paper`` profile (config.yaml), seed 0."""
    from weldfilm.config import DEFAULT_CONFIG, load_yaml, prepare, run_config

    raw = load_yaml(DEFAULT_CONFIG.read_text()) or {}
    raw["profile"] = "paper"
    return run_config(prepare(raw), "causal_film", seed=0)


def environment(device: torch.device) -> dict:
    import transformers

    mamba = None
    if importlib.util.find_spec("mamba_ssm") is not None:
        try:
            mamba = importlib.metadata.version("mamba_ssm")
        except importlib.metadata.PackageNotFoundError:
            mamba = "installed (version unknown)"
    env = {"device": str(device), "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version(), "mamba_ssm": mamba,
           "fp32_matmul": "TF32 allowed" if torch.backends.cuda.matmul.allow_tf32 else "full fp32 (TF32 off)"}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["gpu_memory_gb"] = round(torch.cuda.get_device_properties(device).total_memory / 1e9, 1)
    else:
        env["gpu"] = None
    return env


# ---------------------------------------------------------------------------------------------- backbones
def build_backbones(device: torch.device, quick: bool, pre: dict, result_layers: list[int], log):
    """The paper-size backbones on ``device`` (random init there), the FrozenBackbones of the first four."""
    from weldfilm.models.backbones import FrozenBackbones, load_clip_tokenizer
    from weldfilm.models.sizes import build_random_backbone
    from weldfilm.models.tiny import _save_clip_tokenizer, build_clip_tokenizer

    models = {}
    for name in BACKBONE_ORDER:
        overrides = {"num_hidden_layers": QUICK_LAYERS} if quick else {}
        if quick and name == "vjepa2":
            overrides["pred_num_hidden_layers"] = 1
        started = time.perf_counter()
        with torch.device(device):
            models[name] = build_random_backbone(name, "paper", seed=0, frame_size=pre["frame_size"], **overrides)
        models[name].requires_grad_(False)
        log(f"  built {name} ({sum(p.numel() for p in models[name].parameters()) / 1e6:.1f} M parameters) "
            f"in {time.perf_counter() - started:.1f} s")
    with tempfile.TemporaryDirectory(prefix="gpu_check_clip_") as folder:
        _save_clip_tokenizer(build_clip_tokenizer(vocab_size=models["clip"].config.vocab_size), Path(folder))
        tokenizer = load_clip_tokenizer(folder, models["clip"].config.vocab_size)
    directories = {key: "<in memory>" for key in ("video", "audio", "image", "clip")}  # -> ImageNet/AST defaults
    frozen = FrozenBackbones(models["vjepa2"], models["ast"], models["dinov3"], models["clip"], tokenizer, directories,
                             pre, result_layers, device)
    return models, frozen


def backbone_calls(models: dict, frozen, pre: dict, device: torch.device) -> dict:
    """name -> (fn(batch) -> callable running one call on a batch of that many samples)."""
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    gen = torch.Generator(device=device).manual_seed(0)

    def video(batch):
        x = torch.rand(batch, pre["video_frames"], 3, pre["frame_size"], pre["frame_size"], device=device, generator=gen)
        return lambda: frozen.video_tokens(x)

    def audio(batch):
        x = torch.randn(batch, 1, pre["audio_mel_bins"], pre["audio_frames"], device=device, generator=gen) * 20 - 40
        return lambda: frozen.audio_tokens(x)

    def image(batch):
        x = torch.rand(batch, pre["num_angles"], 3, pre["image_size"], pre["image_size"], device=device, generator=gen)
        return lambda: frozen.image_tokens(x)

    def text(batch):
        return lambda: frozen.text_embedding("a normal weld")

    def m3dm_rgb(batch):  # M3DMFeatures' call of the RGB ViT (final-norm tokens, CLS dropped)
        x = torch.rand(batch, 3, 224, 224, device=device, generator=gen)

        @torch.no_grad()
        def call():
            return models["dino_vitb8"](pixel_values=(x - mean) / std, interpolate_pos_encoding=False).last_hidden_state[:, 1:]
        return call

    def dinomaly(batch):  # DinomalyTrainable's frozen encoder call (all hidden states)
        x = torch.rand(batch, 3, 392, 392, device=device, generator=gen)

        @torch.no_grad()
        def call():
            return models["dinov2_reg"](pixel_values=(x - mean) / std, output_hidden_states=True).hidden_states
        return call

    return {"vjepa2": video, "ast": audio, "dinov3": image, "clip": text, "dino_vitb8": m3dm_rgb, "dinov2_reg": dinomaly}


def bench_backbones(cfg, device, quick, budget, log) -> tuple[list[dict], dict]:
    pre = dict(cfg["preprocess"])
    result_layers = [0, QUICK_LAYERS] if quick else list(cfg["causal_film"]["result_layers"])
    log(f"backbones: building the paper-size models on {device}"
        + (f" (quick: {QUICK_LAYERS} layer each)" if quick else ""))
    models, frozen = build_backbones(device, quick, pre, result_layers, log)
    calls = backbone_calls(models, frozen, pre, device)
    shapes = frozen.token_shapes()
    extra = {"token_shapes": {k: v for k, v in shapes.items() if k.endswith("_tokens")},
             "text_embedding": frozen.text_embedding("a normal weld").float().cpu()}
    rows = []
    for name in BACKBONE_ORDER:
        batch = 1 if quick else FULL_BATCH[name]
        flops = count_flops(calls[name](1))
        for precision in ("fp32", "bf16"):
            row = {"backbone": name, "call": CALLS[name], "precision": precision, "batch": batch,
                   "gflop_per_sample": flops / 1e9}
            if budget.spent():
                rows.append({**row, "skipped": "time budget spent"})
                continue
            fn = calls[name](batch)
            with precision_context(device, precision):
                seconds = time_per_call(fn, device, min_iters=1 if quick else 3, min_seconds=0.0 if quick else 1.0,
                                        warmup=not quick)
            row.update(samples_per_s=batch / seconds, tflops=flops * batch / seconds / 1e12)
            rows.append(row)
            log(f"  {name:10s} {precision}: {row['samples_per_s']:9.2f} samples/s, {row['tflops']:7.2f} TFLOP/s")
    del models, frozen, calls
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows, extra


# ---------------------------------------------------------------------------------------------- mamba
def bench_mamba(cfg, device, quick, log) -> dict:
    from weldfilm.methods.causal_film.mamba import SelectiveScanMixer, make_mamba_mixer, scan_implementation

    dim, length = cfg["causal_film"]["sensor_hidden_dim"], cfg["preprocess"]["sensor_length"]
    batch = 2 if quick else 32
    torch.manual_seed(0)
    reference = SelectiveScanMixer(dim).eval()
    with torch.no_grad():
        for parameter in reference.parameters():  # random weights everywhere, not just the init
            parameter.add_(0.1 * torch.randn_like(parameter))
    x = torch.randn(batch, length, dim)
    with torch.no_grad():
        expected = reference(x)
    scale = float(expected.abs().max())
    installed = importlib.util.find_spec("mamba_ssm") is not None
    result = {"dim": dim, "length": length, "batch": batch, "mamba_ssm_installed": installed,
              "weldfilm_path_on_device": scan_implementation(device), "reference": "SelectiveScanMixer, CPU, fp32",
              "reference_max_abs": scale, "rows": []}

    def compare(label: str, module_or_fn, train: bool = False) -> None:
        try:
            xd = x.to(device)
            if isinstance(module_or_fn, torch.nn.Module):
                module_or_fn.train(train)
                with torch.set_grad_enabled(train):
                    out = module_or_fn(xd)
            else:
                with torch.no_grad():
                    out = module_or_fn(xd)
            diff = float((out.detach().float().cpu() - expected).abs().max())
            result["rows"].append({"implementation": label, "max_abs_diff": diff, "max_rel_diff": diff / scale})
            log(f"  {label}: max |diff| {diff:.3e} (relative {diff / scale:.3e})")
        except Exception as exc:  # a failing path is a finding, not a crash of the whole check
            result["rows"].append({"implementation": label, "error": f"{type(exc).__name__}: {exc}"})
            log(f"  {label}: FAILED {type(exc).__name__}: {exc}")

    mixer = make_mamba_mixer(dim)
    mixer.load_state_dict(reference.state_dict())
    mixer.to(device)
    where = "mamba-ssm kernels if the hub-kernel fallback finds them" if installed else "torch path (no mamba-ssm)"
    compare(f"transformers MambaMixer on {device.type}, eval ({where})", mixer)
    compare(f"transformers MambaMixer on {device.type}, training path (mamba_inner_fn"
            + (")" if installed else " torch fallback)"), mixer, train=True)
    on_device = SelectiveScanMixer(dim)
    on_device.load_state_dict(reference.state_dict())
    compare(f"weldfilm SelectiveScanMixer on {device.type}", on_device.to(device).eval())
    if installed and device.type == "cuda":
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn

        m = mixer

        def direct(xd):
            xz = m.in_proj(xd).transpose(1, 2)
            return mamba_inner_fn(xz, m.conv1d.weight, m.conv1d.bias, m.x_proj.weight, m.dt_proj.weight,
                                  m.out_proj.weight, None, -torch.exp(m.A_log.float()), None, None, m.D.float(),
                                  delta_bias=m.dt_proj.bias.float(), delta_softplus=True)
        compare("mamba_ssm.ops.selective_scan_interface.mamba_inner_fn (CUDA kernels, called directly)", direct)
    elif device.type == "cuda":
        result["note"] = "mamba-ssm is NOT installed here: no CUDA selective-scan kernel was compared"
        log("  mamba-ssm is NOT installed: the CUDA kernels were not compared (torch paths only)")
    return result


# ---------------------------------------------------------------------------------------------- Causal-FiLM step
def paper_features(batch: int, shapes: dict, cfg: dict, device: torch.device) -> dict:
    gen = torch.Generator(device=device).manual_seed(0)
    pre = cfg["preprocess"]
    return {"video_tokens": torch.randn(batch, *shapes["video_tokens"], device=device, generator=gen),
            "audio_tokens": torch.randn(batch, *shapes["audio_tokens"], device=device, generator=gen),
            "image_tokens": torch.randn(batch, *shapes["image_tokens"], device=device, generator=gen),
            "num_images": torch.full((batch,), pre["num_angles"], device=device),
            "sensor": torch.randn(batch, pre["sensor_length"], pre["sensor_channels"], device=device, generator=gen),
            "label": torch.zeros(batch, dtype=torch.long, device=device),
            "class_label": torch.zeros(batch, dtype=torch.long, device=device),
            "sample_id": [f"run{i}" for i in range(batch)]}


def bench_causal_film(cfg, device, quick, token_shapes: dict, text_embedding, budget, log) -> list[dict]:
    import copy

    from weldfilm.methods.causal_film.model import CausalFiLMHead
    from weldfilm.models.sizes import build_config
    from weldfilm.training.schedules import default_optimizer

    cfg = copy.deepcopy(cfg)
    if quick:  # the quick backbones are 1 layer deep: the paper's result_layers do not exist there
        cfg["causal_film"]["result_layers"] = [0, QUICK_LAYERS]
    dims = {"video": build_config("vjepa2").hidden_size, "audio": build_config("ast").hidden_size,
            "image": build_config("dinov3").hidden_size, "clip": build_config("clip").projection_dim,
            "image_prefix_tokens": 1 + build_config("dinov3").num_register_tokens}
    clip = float(cfg["train"].get("gradient_clip", 0.0) or 0.0)
    rows = []
    for precision in ("fp32", "bf16"):
        batch = 1 if quick else cfg["train"]["batch_size"]
        while True:
            if budget.spent():
                rows.append({"precision": precision, "batch": batch, "skipped": "time budget spent"})
                break
            torch.manual_seed(0)
            head = CausalFiLMHead.from_config(cfg, dims, text_embedding=text_embedding).to(device).train()
            optimizer, _, _ = default_optimizer([p for p in head.parameters() if p.requires_grad], cfg["train"], 1)
            features = paper_features(batch, token_shapes, cfg, device)

            def step():
                with precision_context(device, precision):
                    loss = head.training_losses(features)["loss"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip > 0:
                    torch.nn.utils.clip_grad_norm_(head.parameters(), clip)
                optimizer.step()
                return loss

            try:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                flops = count_flops(step)
                seconds = time_per_call(step, device, min_iters=1 if quick else 5, min_seconds=0.0 if quick else 1.0,
                                        warmup=not quick)
            except torch.OutOfMemoryError:
                del head, optimizer, features
                torch.cuda.empty_cache()
                log(f"  Causal-FiLM step {precision}: batch {batch} does not fit, halving")
                batch //= 2
                if batch == 0:
                    rows.append({"precision": precision, "batch": 0, "error": "out of memory at batch 1"})
                    break
                continue
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            row = {"precision": precision, "batch": batch, "seconds_per_step": seconds, "samples_per_s": batch / seconds,
                   "gflop_per_step": flops / 1e9, "tflops": flops / seconds / 1e12, "peak_memory_gib": peak,
                   "trainable_parameters": head.describe()["trainable_parameters"],
                   "sensor_scan": head.describe()["sensor_scan"]}
            rows.append(row)
            log(f"  Causal-FiLM step {precision}, batch {batch}: {seconds * 1e3:.1f} ms, "
                f"{row['tflops']:.2f} TFLOP/s" + (f", peak {peak:.2f} GiB" if peak is not None else ""))
            del head, optimizer, features
            break
    return rows


# ---------------------------------------------------------------------------------------------- output
def render(result: dict) -> str:
    env = result["environment"]
    lines = [f"GPU check on {env['gpu'] or env['device']} (torch {env['torch']}, transformers {env['transformers']}, "
             f"mamba-ssm {env['mamba_ssm'] or 'not installed'}, fp32 matmul: {env['fp32_matmul']})"
             + (" -- QUICK smoke run, not paper-size numbers" if result["quick"] else ""), "",
             "| backbone | call | precision | batch | GFLOP/sample | samples/s | TFLOP/s |", "|---|---|---|---|---|---|---|"]
    for row in result["backbones"]:
        measured = (f"{row['samples_per_s']:.2f} | {row['tflops']:.2f}" if "samples_per_s" in row
                    else f"{row.get('skipped', '-')} | -")
        lines.append(f"| {row['backbone']} | {row['call']} | {row['precision']} | {row['batch']} | "
                     f"{row['gflop_per_sample']:.1f} | {measured} |")
    mamba = result.get("mamba")
    if mamba:
        lines += ["", f"Mamba mixer (dim {mamba['dim']}, length {mamba['length']}, batch {mamba['batch']}) against "
                      f"{mamba['reference']} (max |output| {mamba['reference_max_abs']:.3g}); mamba-ssm installed: "
                      f"{'yes' if mamba['mamba_ssm_installed'] else 'NO'}; weldfilm's path on this device: "
                      f"{mamba['weldfilm_path_on_device']}", "", "| implementation | max abs diff | max rel diff |",
                  "|---|---|---|"]
        for row in mamba["rows"]:
            if "error" in row:
                lines.append(f"| {row['implementation']} | {row['error']} | - |")
            else:
                lines.append(f"| {row['implementation']} | {row['max_abs_diff']:.3e} | {row['max_rel_diff']:.3e} |")
        if mamba.get("note"):
            lines.append(f"\n{mamba['note']}")
    if result.get("causal_film_step"):
        lines += ["", "| Causal-FiLM training step (paper sizes) | batch | ms/step | samples/s | GFLOP/step | TFLOP/s | "
                      "peak memory GiB | sensor scan |", "|---|---|---|---|---|---|---|---|"]
        for row in result["causal_film_step"]:
            if "seconds_per_step" not in row:
                lines.append(f"| {row['precision']} | {row['batch']} | {row.get('skipped') or row.get('error')} "
                             f"| - | - | - | - | - |")
                continue
            peak = f"{row['peak_memory_gib']:.2f}" if row["peak_memory_gib"] is not None else "-"
            lines.append(f"| {row['precision']} | {row['batch']} | {row['seconds_per_step'] * 1e3:.1f} | "
                         f"{row['samples_per_s']:.1f} | {row['gflop_per_step']:.1f} | {row['tflops']:.2f} | {peak} | "
                         f"{row['sensor_scan']} |")
    lines += ["", f"total {result['elapsed_s']:.0f} s"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="1-layer backbones, batch 1: a smoke test (CPU)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="skip the measurements left once this many seconds are spent (default 420)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}, CUDA build: {torch.version.cuda}); "
              "nothing measured. Run it on a GPU machine, or use --device cpu --quick for a smoke test.")
        return 0
    if device.type == "cpu" and not args.quick:
        print("gpu_check: --device cpu without --quick would run the paper-size backbones on the CPU for a long time; "
              "add --quick (a smoke test) or run on a GPU.", file=sys.stderr)
        return 2
    budget = Budget(args.budget_s)

    def log(text: str) -> None:
        print(f"[{budget.elapsed():6.1f} s] {text}", flush=True)

    cfg = paper_run_config()
    result = {"environment": environment(device), "quick": args.quick}
    log(f"environment: {json.dumps(result['environment'])}")
    result["backbones"], extra = bench_backbones(cfg, device, args.quick, budget, log)
    result["token_shapes"] = extra["token_shapes"]
    log("mamba: device paths against the CPU selective scan")
    result["mamba"] = bench_mamba(cfg, device, args.quick, log)
    log("Causal-FiLM: one training step at the paper sizes")
    result["causal_film_step"] = bench_causal_film(cfg, device, args.quick, extra["token_shapes"],
                                                   extra["text_embedding"].to(device), budget, log)
    result["elapsed_s"] = budget.elapsed()
    print()
    print(render(result))
    if args.json:
        from weldfilm.io import atomic_path

        args.json.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.json) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
