"""Seeded training-time augmentations of shared/spec/paper-draft.md section 8.6.

Each operator takes a ``numpy.random.Generator`` (the dataset seeds it per sample) and a float32
array in the data-contract layout, and returns a new array of the same shape and dtype:

- ``augment_images(rng, (N, 3, H, W), params)``: random resized crop, rotation, H/V flip,
  brightness/contrast, saturation/hue, Gaussian blur, Gaussian noise, cutout (per image).
- ``augment_video(rng, (T, 3, H, W), params)``: one resized crop / rotation / flip for the whole
  clip, optional temporal shift (``np.roll``), per-frame brightness/contrast jitter.
- ``augment_audio(rng, (1, F, T), params)``: Gaussian noise, SpecAugment time and frequency masks.
- ``augment_sensor(rng, (T, C), params)``: Gaussian noise, per-channel scaling, single-channel dropout.

Geometric operators are one affine warp (``cv2.warpAffine`` on all channels of a stack at once);
colour operators are 3x3 matrices applied with one ``einsum``. ``DEFAULT_AUGMENT`` mirrors the
``augment`` section of the config schema.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_AUGMENT: dict[str, dict] = {
    "images": {"crop_scale": [0.8, 1.0], "rotation_deg": 10.0, "hflip_p": 0.5, "vflip_p": 0.5,
               "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05, "blur_p": 0.2,
               "blur_sigma": [0.1, 1.5], "noise_std": 0.02, "cutout_p": 0.3, "cutout_frac": 0.2},
    "video": {"crop_scale": [0.8, 1.0], "rotation_deg": 10.0, "hflip_p": 0.5, "vflip_p": 0.0,
              "temporal_shift_max": 2, "frame_jitter": 0.15},
    "audio": {"noise_std": 0.5, "time_mask_max": 20, "freq_mask_max": 8, "num_masks": 1},
    "sensor": {"noise_std": 0.05, "scale_range": [0.9, 1.1], "channel_dropout_p": 0.1},
}

# RGB <-> YIQ: a hue rotation is a rotation of the (I, Q) plane.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)
_LUMA = _RGB_TO_YIQ[0]


def merged_params(params: dict | None) -> dict:
    """``DEFAULT_AUGMENT`` with the given per-modality overrides."""
    params = params or {}
    return {name: {**defaults, **(params.get(name) or {})} for name, defaults in DEFAULT_AUGMENT.items()}


def random_affine(rng: np.random.Generator, height: int, width: int, crop_scale, rotation_deg: float,
                  hflip_p: float, vflip_p: float) -> np.ndarray:
    """2x3 matrix: random resized crop (area fraction in ``crop_scale``), rotation and flips."""
    scale = math.sqrt(rng.uniform(*crop_scale))  # side fraction of the crop
    zoom = 1.0 / scale
    max_shift_x, max_shift_y = (1 - scale) * width / 2, (1 - scale) * height / 2
    shift = np.array([rng.uniform(-max_shift_x, max_shift_x), rng.uniform(-max_shift_y, max_shift_y)])
    angle = math.radians(rng.uniform(-rotation_deg, rotation_deg))
    flip_x = -1.0 if rng.random() < hflip_p else 1.0
    flip_y = -1.0 if rng.random() < vflip_p else 1.0
    cos, sin = math.cos(angle) * zoom, math.sin(angle) * zoom
    linear = np.array([[cos, -sin], [sin, cos]]) @ np.diag([flip_x, flip_y])
    center = np.array([(width - 1) / 2, (height - 1) / 2])
    # output = linear @ (input - (center + shift)) + center
    offset = center - linear @ (center + shift)
    return np.hstack([linear, offset[:, None]]).astype(np.float64)


def warp_stack(stack_chw: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply one affine warp to every channel of ``(K, 3, H, W)`` in a single OpenCV call."""
    import cv2

    k, c, h, w = stack_chw.shape
    hwc = np.ascontiguousarray(stack_chw.reshape(k * c, h, w).transpose(1, 2, 0))
    warped = cv2.warpAffine(hwc, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return warped.reshape(h, w, k * c).transpose(2, 0, 1).reshape(k, c, h, w)


def colour_matrix(rng: np.random.Generator, saturation: float, hue: float) -> np.ndarray:
    """3x3 RGB matrix: saturation blend towards luma, then a hue rotation (fraction of a turn)."""
    sat = rng.uniform(1 - saturation, 1 + saturation)
    saturate = sat * np.eye(3) + (1 - sat) * np.tile(_LUMA, (3, 1))
    theta = 2 * math.pi * rng.uniform(-hue, hue)
    rotate = np.array([[1, 0, 0], [0, math.cos(theta), -math.sin(theta)], [0, math.sin(theta), math.cos(theta)]])
    return _YIQ_TO_RGB @ rotate @ _RGB_TO_YIQ @ saturate


def brightness_contrast(rng: np.random.Generator, stack: np.ndarray, brightness: float, contrast: float) -> np.ndarray:
    """Per-item (first axis) brightness offset and contrast factor about the item's mean."""
    n = stack.shape[0]
    shape = (n,) + (1,) * (stack.ndim - 1)
    factor = rng.uniform(1 - contrast, 1 + contrast, n).reshape(shape)
    offset = rng.uniform(-brightness, brightness, n).reshape(shape)
    mean = stack.mean(axis=tuple(range(1, stack.ndim)), keepdims=True)
    return (stack - mean) * factor + mean + offset


def augment_images(rng: np.random.Generator, images: np.ndarray, params: dict, num_real: int | None = None) -> np.ndarray:
    """Augment the first ``num_real`` images of ``(N, 3, H, W)``; zero padding stays zero."""
    import cv2

    p = params
    out = images.copy()
    n = images.shape[0] if num_real is None else num_real
    if n == 0:
        return out
    _, _, h, w = images.shape
    real = np.concatenate([warp_stack(images[i:i + 1], random_affine(rng, h, w, p["crop_scale"], p["rotation_deg"],
                                                                      p["hflip_p"], p["vflip_p"])) for i in range(n)])
    real = brightness_contrast(rng, real, p["brightness"], p["contrast"])
    colour = np.stack([colour_matrix(rng, p["saturation"], p["hue"]) for _ in range(n)])
    real = np.einsum("nij,njhw->nihw", colour, real)
    for i in np.flatnonzero(rng.random(n) < p["blur_p"]):
        sigma = rng.uniform(*p["blur_sigma"])
        hwc = np.ascontiguousarray(real[i].transpose(1, 2, 0))
        real[i] = cv2.GaussianBlur(hwc, (0, 0), sigma).transpose(2, 0, 1)
    real = real + rng.normal(0.0, p["noise_std"], real.shape)
    for i in np.flatnonzero(rng.random(n) < p["cutout_p"]):
        ch, cw = max(1, int(h * p["cutout_frac"])), max(1, int(w * p["cutout_frac"]))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        real[i, :, top:top + ch, left:left + cw] = 0.0
    out[:n] = np.clip(real, 0.0, 1.0)
    return out.astype(np.float32)


def augment_video(rng: np.random.Generator, video: np.ndarray, params: dict) -> np.ndarray:
    """One geometric transform for the clip, a temporal roll, per-frame brightness/contrast jitter."""
    p = params
    _, _, h, w = video.shape
    out = warp_stack(video, random_affine(rng, h, w, p["crop_scale"], p["rotation_deg"], p["hflip_p"], p["vflip_p"]))
    if p["temporal_shift_max"] > 0:
        out = np.roll(out, int(rng.integers(-p["temporal_shift_max"], p["temporal_shift_max"] + 1)), axis=0)
    out = brightness_contrast(rng, out, p["frame_jitter"], p["frame_jitter"])
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def augment_audio(rng: np.random.Generator, spec: np.ndarray, params: dict) -> np.ndarray:
    """Gaussian noise, then ``num_masks`` time and frequency masks filled with the spectrogram minimum."""
    p = params
    floor = float(spec.min())
    out = spec + rng.normal(0.0, p["noise_std"], spec.shape)
    _, n_freq, n_time = spec.shape
    for _ in range(p["num_masks"]):
        for axis, size, max_width in ((2, n_time, p["time_mask_max"]), (1, n_freq, p["freq_mask_max"])):
            width = int(rng.integers(0, min(max_width, size) + 1))
            start = int(rng.integers(0, size - width + 1))
            index = [slice(None)] * 3
            index[axis] = slice(start, start + width)
            out[tuple(index)] = floor
    return out.astype(np.float32)


def augment_sensor(rng: np.random.Generator, sensor: np.ndarray, params: dict) -> np.ndarray:
    """Gaussian noise, per-channel scaling and (with probability ``channel_dropout_p``) one zeroed channel."""
    p = params
    channels = sensor.shape[1]
    out = sensor * rng.uniform(*p["scale_range"], channels)[None] + rng.normal(0.0, p["noise_std"], sensor.shape)
    if rng.random() < p["channel_dropout_p"]:
        out[:, rng.integers(0, channels)] = 0.0
    return out.astype(np.float32)
