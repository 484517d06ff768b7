"""Arc sound: mains-frequency hum and broadband arc noise that follow the arc power, plus crackle
(pores bursting, spatter droplets) and the burnthrough blast. All energy stays below ``MAX_HZ`` so
that the 16 kHz resample the models use keeps it."""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft
from scipy.signal import oaconvolve

from weldfilm.data.synthetic.plan import RunPlan
from weldfilm.data.synthetic.process import ProcessTrace

MAX_HZ = 7500.0
HUM_HZ = 100.0  # arc ripple at twice the 50 Hz mains
NOMINAL_POWER = 200.0 * 20.0  # W; a 200 A / 20 V arc has level 1
OUTPUT_GAIN = 0.08


def _shaped_noise(rng, n: int, sr: int, corner_hz: float) -> np.ndarray:
    """Unit-variance noise with a low-pass spectrum of the given corner frequency."""
    fast = sfft.next_fast_len(n, real=True)
    spectrum = sfft.rfft(rng.standard_normal(fast))
    spectrum /= np.sqrt(1.0 + (np.fft.rfftfreq(fast, 1.0 / sr) / corner_hz) ** 2)
    noise = sfft.irfft(spectrum, fast)[:n]
    return noise / (noise.std() + 1e-12)


def _low_pass(signal: np.ndarray, sr: int, cutoff_hz: float) -> np.ndarray:
    """Remove everything above ``cutoff_hz`` (cosine roll-off over the last 500 Hz)."""
    fast = sfft.next_fast_len(signal.size, real=True)  # zero-padded: odd lengths would be slow
    spectrum = sfft.rfft(signal, fast)
    edge = np.clip((np.fft.rfftfreq(fast, 1.0 / sr) - (cutoff_hz - 500.0)) / 500.0, 0.0, 1.0)
    spectrum *= 0.5 * (1.0 + np.cos(np.pi * edge))
    return sfft.irfft(spectrum, fast)[: signal.size]


def _crackle(rng, n: int, sr: int, times: np.ndarray, strength: float) -> np.ndarray:
    """Sharp ticks (three damped 2.5-6.5 kHz ringings, about 1 ms) at ``times``: bursting pores and
    droplets. Band-limited so that the 7.5 kHz low-pass and a 16 kHz resample keep them."""
    impulses = np.zeros(n)
    idx = np.clip((times * sr).astype(int), 0, n - 1)
    np.add.at(impulses, idx, strength * rng.uniform(0.5, 1.5, idx.size) * rng.choice([-1.0, 1.0], idx.size))
    k = np.arange(int(0.005 * sr)) / sr
    ring = np.sin(2 * np.pi * rng.uniform(2500, 6500, (3, 1)) * k + rng.uniform(0, 2 * np.pi, (3, 1))).sum(axis=0)
    return oaconvolve(impulses, ring * np.exp(-k / 0.001), mode="full")[:n]


def _hum(rng, t: np.ndarray) -> np.ndarray:
    """12 harmonics of ``HUM_HZ`` with 1/k amplitudes (one period tabulated, then looked up)."""
    cycle = np.linspace(0.0, 1.0, 2049)
    harmonics = np.arange(1, 13)[:, None]
    phases = rng.uniform(0, 2 * np.pi, (12, 1))
    table = (np.sin(2 * np.pi * harmonics * cycle + phases) / harmonics).sum(axis=0)
    return np.interp(np.mod(t * HUM_HZ, 1.0), cycle, table)


def synthesize_audio(plan: RunPlan, trace: ProcessTrace, sr: int, rng: np.random.Generator) -> np.ndarray:
    """The run's sound (mono float32 in [-1, 1]) at ``sr`` Hz."""
    effects = plan.effects
    n = max(int(round(plan.duration_s * sr)), 64)
    t = np.arange(n) / sr
    current, voltage = trace.at("current", t), trace.at("voltage", t)
    power = current * voltage / NOMINAL_POWER
    hum = _hum(rng, t)
    corner = 1200.0 + 180.0 * (plan.voltage_v - 14.0)  # longer (higher-voltage) arcs hiss brighter
    flutter = 1.0 + 0.25 * _shaped_noise(rng, n, sr, 40.0)  # slow arc-length fluctuation
    sound = 0.35 * (current / 200.0) * hum + 0.6 * power * flutter * _shaped_noise(rng, n, sr, corner)

    weld = trace.arc_end - trace.arc_start
    crackle_times = []
    if "no_gas" in effects:
        crackle_times.append(rng.uniform(trace.arc_start, trace.arc_end, rng.poisson(70 * weld)))
    if "unstable_arc" in effects:
        crackle_times.append(trace.events["short_circuits"][:, 0])
        crackle_times.append(rng.uniform(trace.arc_start, trace.arc_end, rng.poisson(40 * weld)))
    if crackle_times:
        sound += _crackle(rng, n, sr, np.concatenate(crackle_times), 3.0 * plan.strength)
    if "surge" in effects:
        te = trace.events["burnthrough_t"]
        envelope = np.exp(-np.clip(t - te, 0, None) / 0.05) * (t >= te - 0.005)
        sound += 3.0 * plan.strength * envelope * _shaped_noise(rng, n, sr, 3000.0)
    sound += 0.01 * rng.standard_normal(n)  # room noise
    sound = _low_pass(sound, sr, min(MAX_HZ, 0.45 * sr))
    return np.clip(OUTPUT_GAIN * sound, -0.99, 0.99).astype(np.float32)
