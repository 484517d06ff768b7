"""The welding process in time: arc current, voltage, wire feed and shielding gas, and the sensor CSV.

The process is simulated at ``PROCESS_HZ`` (fine enough for short circuits); the CSV samples it at
the configured sensor rate, and the sound and video interpolate it to their own clocks, so every
modality follows the same arc.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from weldfilm.data.layout import SENSOR_COLUMNS
from weldfilm.data.synthetic.plan import RunPlan, toward

PROCESS_HZ = 1000.0
FLOW_PER_BAR = 4.2  # l/min of CO2 flow per bar of regulator pressure
CRATER_FILL_LEVEL = 0.15  # current fraction a normal weld ramps down to before the arc stops


@dataclass
class ProcessTrace:
    """Arc quantities on the process clock ``t`` (seconds) and the events that drive the renderers."""

    t: np.ndarray
    current: np.ndarray
    voltage: np.ndarray
    feed: np.ndarray
    pressure: np.ndarray
    flow: np.ndarray
    arc_on: np.ndarray
    arc_start: float
    arc_end: float
    events: dict = field(default_factory=dict)

    def travel_fraction(self, t: np.ndarray) -> np.ndarray:
        """Torch position along the bead (0 at arc start, 1 at arc end) at times ``t``."""
        return np.clip((t - self.arc_start) / (self.arc_end - self.arc_start), 0.0, 1.0)

    def at(self, name: str, t: np.ndarray) -> np.ndarray:
        """A trace linearly interpolated to times ``t``."""
        return np.interp(t, self.t, getattr(self, name).astype(np.float64))


def _smooth_walk(rng, n: int, scale: float, width: int) -> np.ndarray:
    """Slow random drift of relative size ``scale`` (a smoothed random walk, zero mean)."""
    walk = np.cumsum(rng.normal(0.0, 1.0, n + width))
    walk = np.convolve(walk, np.ones(width) / width, mode="valid")[:n]
    walk -= walk.mean()
    return scale * walk / (np.abs(walk).max() + 1e-9)


def _bump(t: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((t - centre) / width) ** 2)


def simulate_process(plan: RunPlan, rng: np.random.Generator) -> ProcessTrace:
    """The run's arc on the process clock, with the class's process signature (scaled by ``plan.strength``)."""
    effects, k = plan.effects, plan.strength
    n = max(int(round(plan.duration_s * PROCESS_HZ)), 16)
    t = np.arange(n) / PROCESS_HZ
    arc_start = plan.duration_s * rng.uniform(0.03, 0.06)
    arc_end = plan.duration_s * rng.uniform(0.92, 0.95)
    weld = arc_end - arc_start
    arc_on = (t >= arc_start) & (t < arc_end)

    level = np.clip((t - arc_start) / 0.06, 0.0, 1.0)  # arc ignition ramp
    # crater fill: ramp down before the arc stops (a crater-crack run stops abruptly: no ramp at strength 1)
    fill = toward(CRATER_FILL_LEVEL, 1.0, k) if "abrupt_stop" in effects else CRATER_FILL_LEVEL
    if fill < 1.0:
        ramp_from = arc_end - 0.12 * weld
        down = np.clip((t - ramp_from) / (arc_end - ramp_from), 0.0, 1.0)
        level = level * (1.0 - (1.0 - fill) * down)
    level = np.where(arc_on, level, 0.0)

    current_noise, voltage_noise = 0.01 * plan.current_a, 0.012 * plan.voltage_v
    if "no_gas" in effects:  # unshielded arc wanders
        current_noise, voltage_noise = toward(1, 2, k) * current_noise, toward(1, 3, k) * voltage_noise
    if "unstable_arc" in effects:
        voltage_noise *= toward(1, 4, k)
    current = plan.current_a * level * (1 + _smooth_walk(rng, n, 0.02, 200)) + rng.normal(0, current_noise, n) * arc_on
    voltage = plan.voltage_v * (0.7 + 0.3 * level) * (1 + _smooth_walk(rng, n, 0.015, 200))
    voltage = (voltage + rng.normal(0, voltage_noise, n)) * arc_on
    feed = plan.feed_mpm * (0.2 + 0.8 * level) * arc_on * (1 + rng.normal(0, 0.005, n))

    events: dict = {}
    if "surge" in effects:  # burnthrough: current surge, then the arc lengthens through the hole
        te = arc_start + weld * rng.uniform(0.45, 0.7)
        events["burnthrough_t"] = float(te)
        current = current + 0.35 * k * plan.current_a * _bump(t, te, 0.04) * arc_on
        after = ((t > te) & (t < te + 0.15)) * arc_on
        voltage = voltage + 4.0 * k * after
        current = current * (1 - 0.2 * k * after)
    if "unstable_arc" in effects:  # spatter: repeated short circuits
        starts = np.sort(rng.uniform(arc_start, arc_end, rng.poisson(12 * weld) + 3))
        lengths = rng.uniform(0.004, 0.015, starts.size)
        shorted = np.zeros(n, bool)
        for s, d in zip(starts, lengths):
            shorted |= (t >= s) & (t < s + d)
        shorted &= arc_on
        voltage = np.where(shorted, toward(1.0, 0.25, k) * voltage, voltage)
        current = np.where(shorted, current + 0.4 * k * plan.current_a, current)
        events["short_circuits"] = np.stack([starts, lengths], axis=1)

    gas = plan.gas_bar
    if gas > 0:  # the valve opens just before the arc (pre-flow), the line fills within ~50 ms
        valve = np.clip(1 - np.exp(-(t - arc_start * rng.uniform(0.3, 0.6)) / 0.05), 0, 1)
        pressure = gas * valve * (1 + rng.normal(0, 0.01, n))
        flow = FLOW_PER_BAR * gas * valve * (1 + _smooth_walk(rng, n, 0.03, 300)) + rng.normal(0, 0.15, n)
    else:  # porosity runs were welded with the gas off: no pre-flow step, only sensor noise
        pressure = np.abs(rng.normal(0, 0.02, n))
        flow = np.abs(rng.normal(0, 0.1, n))
    return ProcessTrace(t=t, current=np.maximum(current, 0.0), voltage=np.maximum(voltage, 0.0),
                        feed=np.maximum(feed, 0.0), pressure=pressure, flow=np.maximum(flow, 0.0),
                        arc_on=arc_on, arc_start=float(arc_start), arc_end=float(arc_end), events=events)


def sensor_table(plan: RunPlan, trace: ProcessTrace, sensor_hz: float) -> pd.DataFrame:
    """The run's CSV: the ten real columns, one row per sample of the data logger."""
    rows = max(int(round(plan.duration_s * sensor_hz)), 8)
    t = np.arange(rows) / sensor_hz
    feed = trace.at("feed", t)
    stamps = [plan.start_time + _dt.timedelta(seconds=float(s)) for s in t]
    table = {
        "Date": [f"{s:%m/%d/%Y}" for s in stamps],
        "Time": [f"{s:%H:%M:%S}.{s.microsecond // 1000:03d}" for s in stamps],
        "Part No": [plan.part_no] * rows,
        "Pressure": np.round(trace.at("pressure", t), 3),
        "CO2 Weld Flow": np.round(trace.at("flow", t), 2),
        "Feed": np.round(feed, 2),
        "Primary Weld Current": np.round(trace.at("current", t), 1),
        "Wire Consumed": np.round(np.cumsum(feed) / 60.0 / sensor_hz, 4),
        "Secondary Weld Voltage": np.round(trace.at("voltage", t), 2),
        "Remarks": [""] * rows,
    }
    return pd.DataFrame(table, columns=SENSOR_COLUMNS)
