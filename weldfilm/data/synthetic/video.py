"""Melt-pool video: a bright arc blob whose size and brightness follow the arc power, moving along
a glowing bead on a dark plate, with the flash, sparks and smoke of the process defects."""

from __future__ import annotations

import numpy as np

from weldfilm.data.synthetic.plan import APPEARANCES, RunPlan, toward
from weldfilm.data.synthetic.process import ProcessTrace

ARC_CORE = np.array([1.0, 0.97, 0.9], np.float32)
ARC_HALO = np.array([1.0, 0.72, 0.3], np.float32)
ARC_HALO_NO_GAS = np.array([1.0, 0.45, 0.15], np.float32)  # air-burning arc: redder
BEAD_GLOW = np.array([1.0, 0.42, 0.08], np.float32)
SMOKE = np.array([0.42, 0.36, 0.28], np.float32)
SPARK = np.array([1.0, 0.92, 0.55], np.float32)


def render_video(plan: RunPlan, trace: ProcessTrace, size: int, fps: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Frames ``(T, size, size, 3)`` uint8 RGB of the run (defect effects scaled by ``plan.strength``)."""
    effects, k = plan.effects, plan.strength
    n = max(int(round(plan.duration_s * fps)), 2)
    tf = (np.arange(n) + 0.5) / fps
    current, voltage = trace.at("current", tf), trace.at("voltage", tf)
    on = trace.at("arc_on", tf) > 0.5
    power = np.where(on, current * voltage / 4000.0, 0.0)
    flicker = 1.0 + rng.normal(0, 0.04, n)
    if "no_gas" in effects:
        flicker = toward(flicker, rng.uniform(0.55, 1.45, n), k)
    power = power * flicker

    s = float(size)
    travel = trace.travel_fraction(tf)
    x_torch = s * (0.15 + 0.7 * travel)
    y_torch = s * (0.55 + rng.uniform(-0.03, 0.03))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx = xx[None] - x_torch[:, None, None].astype(np.float32)
    dy = (yy - y_torch)[None]

    radius = s * 0.06 * np.clip(current / 200.0, 0.05, None) ** 0.7
    aspect = (plan.voltage_v / 20.0) ** 1.2  # long arcs spread sideways
    if "convex" in effects:
        aspect *= toward(1.0, 0.7, k)
    rx = (radius * aspect)[:, None, None].astype(np.float32) + 0.5
    ry = radius[:, None, None].astype(np.float32) + 0.5
    blob = np.exp(-0.5 * ((dx / rx) ** 2 + (dy / ry) ** 2))
    level = power[:, None, None].astype(np.float32)

    bead_half = s * 0.025 * (plan.current_a / 200.0) ** 0.8 * (30.0 / plan.speed_cpm) ** 0.6
    cooling = np.exp(-np.clip(-dx, 0, None) / (0.18 * s)) * (dx < 0)
    seam_start = s * 0.15
    trail = cooling * np.exp(-0.5 * (dy / bead_half) ** 2) * (xx >= seam_start)[None]
    trail *= np.clip(travel[:, None, None] * 50, 0, 1).astype(np.float32)
    if "seam_gap" in effects:  # cold arc: the bead hardly glows
        trail *= toward(1.0, 0.4, k)

    look = APPEARANCES[plan.configuration.preset]
    plate = np.asarray(look["plate"], np.float32) * 0.35
    glow_light = 0.1 + 0.5 * np.exp(-np.sqrt(dx ** 2 + dy ** 2) / (0.4 * s)) * level
    halo_colour = toward(ARC_HALO, ARC_HALO_NO_GAS, k) if "no_gas" in effects else ARC_HALO
    layers = np.stack([glow_light, 0.8 * trail * np.clip(level, 0.3, 1.5), np.clip(np.sqrt(blob) * level, 0, 1.2),
                       np.clip(blob * 2.5 * level - 0.6, 0, 1)], axis=-1)
    frames = layers @ np.stack([plate, BEAD_GLOW, halo_colour, ARC_CORE])  # (T, H, W, 3)

    if "no_gas" in effects:  # smoke from the unshielded arc
        haze = k * rng.uniform(0.15, 0.35, n)[:, None, None] * np.exp(-0.5 * (dx ** 2 + dy ** 2) / (0.35 * s) ** 2)
        frames += haze[..., None] * SMOKE
    if "surge" in effects:
        te = trace.events["burnthrough_t"]
        flash = 0.9 * k * np.exp(-np.clip(tf - te, 0, None) / 0.12) * (tf >= te - 0.5 / fps)
        frames += flash[:, None, None, None].astype(np.float32) * ARC_CORE
        x_hole = s * (0.15 + 0.7 * float(trace.travel_fraction(np.array([te]))[0]))
        hole = ((xx - x_hole) ** 2 + (yy - y_torch) ** 2) < (1.6 * bead_half) ** 2
        frames[tf > te + 0.1] *= np.where(hole, toward(1.0, 0.05, k), 1.0)[..., None]
    if "sparks" in effects:
        _add_sparks(frames, rng, x_torch, y_torch, radius, on, k)
    frames += 0.04 * (rng.random((*frames.shape[:3], 1), dtype=np.float32) - 0.5)  # sensor noise (luma)
    return (np.clip(frames, 0, 1) * 255 + 0.5).astype(np.uint8)


def _add_sparks(frames: np.ndarray, rng, x_torch, y_torch: float, radius, on, strength: float = 1.0) -> None:
    """Bright 2x2 dots flying out of the arc (spatter droplets), in place; ``strength`` < 1 blends them in."""
    n, size = frames.shape[:2]
    counts = rng.poisson(35, n) * on
    frame_idx = np.repeat(np.arange(n), counts)
    angle = rng.uniform(0, 2 * np.pi, frame_idx.size)
    dist = rng.uniform(1.5, 6.0, frame_idx.size) * radius[frame_idx]
    px = np.clip(x_torch[frame_idx] + dist * np.cos(angle), 0, size - 2).astype(int)
    py = np.clip(y_torch + dist * np.sin(angle), 0, size - 2).astype(int)
    for oy in (0, 1):
        for ox in (0, 1):
            frames[frame_idx, py + oy, px + ox] = toward(frames[frame_idx, py + oy, px + ox], SPARK, strength)
