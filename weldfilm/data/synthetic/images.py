"""Post-weld photos: the finished bead on its plate, seen from several angles and lights.

The bead follows from the process: its width along the weld follows the current trace (so a
normal weld tapers in its crater fill and an abrupt stop ends square), its ripple pitch the travel
speed, its height the wire fed per length. Defects are local, high-contrast marks several ViT
patches large (pores, hole, grooves, lip, seam gap, highlight, droplets, bend, crack). Their
contrast (and the bend, and the class's changes of the bead's shape) scale with ``plan.strength``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from weldfilm.data.synthetic.plan import APPEARANCES, RunPlan, synergic_feed, toward
from weldfilm.data.synthetic.process import ProcessTrace

METAL = np.array([0.66, 0.66, 0.68], np.float32)
TINT_GOLD = np.array([0.78, 0.62, 0.30], np.float32)
TINT_BLUE = np.array([0.32, 0.36, 0.62], np.float32)
OXIDE = np.array([0.17, 0.10, 0.06], np.float32)
X0, X1 = 0.08, 0.92  # bead start/end (fraction of the image width)


class _Canvas:
    """Albedo (RGB), height (pixels) and shininess maps of the plate seen from straight above."""

    def __init__(self, size: int):
        self.size = size
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        self.xx, self.yy = xx, yy
        self.albedo = np.zeros((size, size, 3), np.float32)
        self.height = np.zeros((size, size), np.float32)
        self.shiny = np.zeros((size, size), np.float32)

    def paint(self, mask, colour, height=None, shiny=None, add_height=None):
        """Set albedo (and optionally height/shininess) where ``mask`` (bool or 0..1 weight) holds."""
        w = mask.astype(np.float32)
        self.albedo = self.albedo * (1 - w[..., None]) + w[..., None] * np.asarray(colour, np.float32)
        if height is not None:
            self.height = self.height * (1 - w) + w * height
        if add_height is not None:
            self.height = self.height + w * add_height
        if shiny is not None:
            self.shiny = self.shiny * (1 - w) + w * shiny


def _texture(rng, size: int, cells: int, amplitude: float) -> np.ndarray:
    """Smooth random field around 1 (cloudy mill scale, grain)."""
    low = rng.normal(0, 1, (cells, cells)).astype(np.float32)
    return 1.0 + amplitude * cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)


@dataclass
class _Bead:
    """Bead geometry: centre line and half-width per column, nominal half-width, crown height,
    weld fraction per column, signed distance of every pixel from the centre line."""

    centre: np.ndarray
    half_x: np.ndarray
    half: float
    crown: float
    frac: np.ndarray
    d: np.ndarray


def _bead_geometry(plan: RunPlan, trace: ProcessTrace, c: _Canvas, rng) -> _Bead:
    """The bead as the process made it (width follows the current along the weld)."""
    s = float(c.size)
    effects, k = plan.effects, plan.strength
    x = c.xx[0]
    frac = (x / s - X0) / (X1 - X0)
    inside = (frac >= 0) & (frac <= 1)
    t = trace.arc_start + np.clip(frac, 0, 1) * (trace.arc_end - trace.arc_start)
    smooth_current = np.convolve(trace.current, np.ones(40) / 40, mode="same")
    current = np.interp(t, trace.t, smooth_current)
    feed_ratio = plan.feed_mpm / synergic_feed(plan.current_a)
    half = s * 0.045 * (plan.current_a / 200.0) ** 0.8 * (30.0 / plan.speed_cpm) ** 0.6 * feed_ratio ** 0.5
    if "convex" in effects:
        half *= toward(1.0, 0.7, k)
    half_x = half * np.clip(current / plan.current_a, 0, 1.5) ** 0.8 * inside
    crown = 0.4 * half * feed_ratio * (toward(1.0, 2.2, k) if "convex" in effects else 1.0)
    centre = s * (0.5 + rng.uniform(-0.04, 0.04)) + np.zeros_like(x)
    if "warp" in effects:  # the plate bowed: bead and plate edges bend together
        centre = centre + rng.choice([-1, 1]) * s * (k * rng.uniform(0.09, 0.12)) * np.sin(np.pi * x / s)
    d = c.yy - centre[None, :]
    return _Bead(centre, half_x.astype(np.float32), float(half), float(crown), frac, d)


def _build_scene(plan: RunPlan, trace: ProcessTrace, size: int, rng) -> _Canvas:
    """Table, plate (bent when warped), heat tint, rippled bead, then the class's defect marks."""
    c = _Canvas(size)
    s = float(size)
    look = APPEARANCES[plan.configuration.preset]
    effects = plan.effects
    bead = _bead_geometry(plan, trace, c, rng)
    centre, half_x, crown, d = bead.centre, bead.half_x, bead.crown, bead.d
    bow = centre - centre.mean()
    v = c.yy - bow[None, :]  # plate coordinate (follows the bend)

    grain = _texture(rng, size, 12, 0.08)
    c.albedo[:] = np.asarray(look["table"], np.float32) * _texture(rng, size, 6, 0.2)[..., None]
    plate = (v > s * 0.08) & (v < s * 0.92)
    c.paint(plate, look["plate"])
    c.albedo *= grain[..., None]
    if plan.configuration.weld_type == "FILLET":  # the upright plate of the joint, darker
        c.paint((plate & (d < 0)) * 0.35, (0, 0, 0))
    if "warp" in effects:  # a bent plate: the surface tilts
        c.height += (0.15 * plan.strength * s * np.sin(np.pi * c.xx / s) * np.cos(np.pi * (v / s - 0.5))).astype(np.float32)

    r = np.abs(d) / np.maximum(half_x[None, :], 1e-3)
    tint = np.exp(-(((r - 1.4) / 0.35) ** 2)) * (half_x[None, :] > 0)
    heat = plan.current_a * plan.voltage_v / plan.speed_cpm / 140.0
    c.paint(tint * 0.6, TINT_BLUE if heat > 1.0 else TINT_GOLD)
    on_bead = r < 1.0
    pitch = s * 0.025 * plan.speed_cpm / 30.0
    phase = 2 * np.pi * ((c.xx - s * X0) + 0.5 * d ** 2 / np.maximum(half_x[None, :], 1.0)) / pitch
    ripple = np.cos(phase).astype(np.float32)
    profile = np.sqrt(np.clip(1 - r ** 2, 0, 1))
    c.paint(on_bead, METAL * (0.85 + 0.15 * ripple)[..., None], shiny=1.0)
    c.height += on_bead * crown * profile * (1 + 0.08 * ripple)
    _paint_defects(c, plan, trace, rng, bead, np.asarray(look["plate"], np.float32))
    return c


def _disc(c: _Canvas, x: float, y: float, radius: float):
    """Pixels within ``radius`` of (x, y)."""
    return (c.xx - x) ** 2 + (c.yy - y) ** 2 < radius ** 2


def _paint_defects(c: _Canvas, plan, trace, rng, bead: _Bead, plate_colour) -> None:
    """Draw the class's result signature into the canvas; every mark is blended in with weight
    ``plan.strength`` (its colour, height and shine; 1 = painted over, 0 = invisible)."""
    s, effects, k = float(c.size), plan.effects, plan.strength
    d, half_x, half, crown, frac = bead.d, bead.half_x, bead.half, bead.crown, bead.frac
    along = (frac >= 0.1) & (frac <= 0.9)
    if "root" in effects:  # excessive penetration: sunken crown with a wide dark oxidised root
        band = (np.abs(d) < 0.8 * half * _texture(rng, c.size, 10, 0.25)) & (along & (frac <= 0.85))[None, :]
        c.paint(band * k, OXIDE, shiny=0.0)
        c.height -= band * (0.6 * k) * crown
    if "pores" in effects:
        for p in np.sort(rng.uniform(0.12, 0.88, rng.integers(5, 9))):
            col = int(np.clip(s * (X0 + p * (X1 - X0)), 0, c.size - 1))
            x, y = float(col), float(bead.centre[col]) + rng.uniform(-0.4, 0.4) * half
            radius = s * rng.uniform(0.022, 0.035)
            c.paint(_disc(c, x, y, 1.3 * radius) * k, (0.9, 0.9, 0.9), shiny=1.0)
            c.paint(_disc(c, x, y, radius) * k, (0.03, 0.03, 0.03), add_height=-0.6 * crown, shiny=0.0)
    if "hole" in effects:  # burnthrough where the surge happened
        p = float(trace.travel_fraction(np.array([trace.events["burnthrough_t"]]))[0])
        col = int(np.clip(s * (X0 + p * (X1 - X0)), 0, c.size - 1))
        x, y = float(col), float(bead.centre[col])
        c.paint(_disc(c, x, y, 0.11 * s) * k, (0.25, 0.20, 0.32), shiny=0.0)
        c.paint(_disc(c, x, y, 0.08 * s) * k, METAL * 1.15, add_height=0.5 * crown, shiny=1.0)  # re-solidified lip
        c.paint(_disc(c, x, y, 0.06 * s) * k, (0.0, 0.0, 0.0), height=-crown)
    if "grooves" in effects:  # undercut: grooves melted into the plate along both bead edges
        edge = np.abs(np.abs(d) - half_x[None, :] - 0.0125 * s) < 0.0125 * s
        c.paint((edge & along[None, :]) * k, (0.04, 0.04, 0.04), add_height=-0.5 * crown, shiny=0.0)
    if "lip" in effects:  # overlap: metal rolled over the plate on one side, with its shadow
        lip = (d > half_x[None, :]) & (d < half_x[None, :] + 0.05 * s) & along[None, :]
        shadow = (d >= half_x[None, :] + 0.05 * s) & (d < half_x[None, :] + 0.07 * s) & along[None, :]
        c.paint(lip * k, METAL * 1.2, height=0.8 * crown, shiny=1.0)
        c.paint(shadow * k, (0.03, 0.03, 0.03), shiny=0.0)
    if "seam_gap" in effects:  # lack of fusion: unfused seam beside the bead and where it breaks
        gap = (d < -half_x[None, :]) & (d > -half_x[None, :] - 0.025 * s) & (half_x[None, :] > 0)
        breaks = np.zeros_like(frac, bool)
        for p in rng.uniform(0.2, 0.8, 2):
            breaks |= np.abs(frac - p) < 0.05
        seam = (np.abs(d) < 0.012 * s) & breaks[None, :]
        c.paint(((np.abs(d) < 1.05 * half_x[None, :]) & breaks[None, :]) * k, plate_colour, height=0.0, shiny=0.0)
        c.paint((gap | seam) * k, (0.03, 0.03, 0.03), height=-0.2 * crown, shiny=0.0)
    if "convex" in effects:  # tall narrow bead: bright crown highlight, dark steep toes
        c.paint(((np.abs(d) < 0.18 * half_x[None, :]) & along[None, :]) * k, (1.0, 1.0, 1.0), shiny=1.0)
        toe = (np.abs(d) > half_x[None, :]) & (np.abs(d) < half_x[None, :] + 0.02 * s)
        c.paint((toe & along[None, :]) * k, (0.08, 0.08, 0.08), shiny=0.0)
    if "spatter_dots" in effects:
        n = int(rng.integers(35, 61))
        cols = rng.uniform(s * X0, s * X1, n).astype(int)
        offsets = rng.choice([-1, 1], n) * (1.4 * half + rng.uniform(0, 0.22 * s, n))
        for col, off, radius in zip(cols, offsets, rng.uniform(0.012, 0.026, n) * s):
            x, y = float(col), float(bead.centre[col]) + off  # a metal bead with its dark burn mark
            c.paint(_disc(c, x + 0.4 * radius, y + 0.4 * radius, 1.4 * radius) * k, (0.05, 0.05, 0.05), shiny=0.0)
            c.paint(_disc(c, x, y, radius) * k, METAL * 1.1, add_height=radius * 1.5, shiny=1.0)
    if "crack" in effects:  # crater at the square bead end with a crack running back into it
        x_end = s * X1
        col = int(min(x_end - half * 0.5, c.size - 1))
        y = float(bead.centre[col])
        c.paint(_disc(c, x_end - 0.6 * half, y, 1.1 * half) * k, (0.28, 0.27, 0.27), add_height=-0.5 * crown)
        mask = np.zeros((c.size, c.size), np.uint8)
        thickness = max(3, c.size // 80)
        for _ in range(3):
            pts = [(x_end - 0.6 * half, y)]
            for _ in range(7):
                px, py = pts[-1]
                pts.append((px - s * rng.uniform(0.015, 0.03), py + s * rng.uniform(-0.015, 0.015)))
            cv2.polylines(mask, [np.round(np.array(pts)).astype(np.int32)], False, 1, thickness)
        c.paint((mask > 0) * k, (0.02, 0.02, 0.02), add_height=-0.4 * crown, shiny=0.0)


def render_photos(plan: RunPlan, trace: ProcessTrace, size: int, num_angles: int,
                  rng: np.random.Generator) -> list[np.ndarray]:
    """``num_angles`` uint8 RGB photos ``(size, size, 3)`` of the same bead under different views."""
    scene = _build_scene(plan, trace, size, rng)
    gy, gx = np.gradient(scene.height)
    normal = np.stack([-gx, -gy, np.ones_like(gx)], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    light_colour = np.asarray(APPEARANCES[plan.configuration.preset]["light"], np.float32)
    base_azimuth = rng.uniform(0, 2 * np.pi)
    photos = []
    for k in range(num_angles):
        azimuth = base_azimuth + 2 * np.pi * k / max(num_angles, 1)
        elevation = np.deg2rad(rng.uniform(35, 60))
        light = np.array([np.cos(azimuth) * np.cos(elevation), np.sin(azimuth) * np.cos(elevation),
                          np.sin(elevation)], np.float32)
        diffuse = np.clip(normal @ light, 0, 1)
        halfway = light + np.array([0, 0, 1], np.float32)
        halfway /= np.linalg.norm(halfway)
        specular = np.clip(normal @ halfway, 0, 1) ** 40 * scene.shiny
        img = scene.albedo * (0.35 + 0.75 * diffuse)[..., None] + 0.45 * specular[..., None]
        img = img * light_colour * rng.uniform(0.9, 1.1)
        angle, scale = rng.uniform(-6, 6) if k else 0.0, rng.uniform(0.96, 1.04) if k else 1.0
        matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
        matrix[:, 2] += rng.uniform(-0.02, 0.02, 2) * size
        img = cv2.warpAffine(img, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        img += 0.035 * (rng.random((size, size, 1), dtype=np.float32) - 0.5)  # camera noise (luma)
        photos.append((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
    return photos
