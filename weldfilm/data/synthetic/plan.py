"""What to simulate: process settings of each configuration, defect signatures, and the run plan.

Everything here is decided in the parent process from the dataset seed, so that the runs (rendered
in any order, by any number of workers) are the same files for the same seed.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

import numpy as np

from weldfilm.data.layout import CLASS_NAMES
from weldfilm.errors import ConfigError

# Four good process settings ("presets"); each also fixes the look of its plates (steel, thickness,
# joint) and its photo lighting. Defect configurations start from one of them and change what
# their defect needs, so that appearance alone never tells a defect from a good run.
GOOD_PRESETS: tuple[dict, ...] = (
    dict(weld_type="NON_FILLET", thickness_mm=3, steel="FE410", current_a=180.0, voltage_v=19.0,
         gas_bar=3.0, speed_cpm=30.0),
    dict(weld_type="NON_FILLET", thickness_mm=7, steel="BSK46", current_a=230.0, voltage_v=21.5,
         gas_bar=4.0, speed_cpm=27.0),
    dict(weld_type="FILLET", thickness_mm=3, steel="FE410", current_a=170.0, voltage_v=18.0,
         gas_bar=2.5, speed_cpm=33.0),
    dict(weld_type="FILLET", thickness_mm=7, steel="BSK46", current_a=245.0, voltage_v=22.0,
         gas_bar=3.5, speed_cpm=25.0),
)

# Look of each preset: plate albedo (RGB), table (background) albedo, light colour (RGB gain).
APPEARANCES: tuple[dict, ...] = (
    dict(plate=(0.60, 0.60, 0.62), table=(0.10, 0.11, 0.12), light=(1.00, 0.97, 0.90)),
    dict(plate=(0.38, 0.40, 0.46), table=(0.16, 0.14, 0.12), light=(0.92, 0.96, 1.05)),
    dict(plate=(0.55, 0.53, 0.50), table=(0.08, 0.09, 0.08), light=(1.05, 1.00, 0.92)),
    dict(plate=(0.42, 0.43, 0.45), table=(0.18, 0.18, 0.20), light=(0.97, 1.00, 1.00)),
)


@dataclass(frozen=True)
class DefectSpec:
    """How a class changes the process settings (``set``: absolute, ``scale``: factors) and which
    rendering effects it switches on (see docs/synthetic.md for each effect's modality)."""

    set: dict = field(default_factory=dict)
    scale: dict = field(default_factory=dict)
    effects: frozenset = frozenset()


def _spec(set_=None, scale=None, effects=()):
    return DefectSpec(set=dict(set_ or {}), scale=dict(scale or {}), effects=frozenset(effects))


DEFECT_SPECS: dict[int, DefectSpec] = {
    0: _spec(),
    1: _spec({"current_a": 275.0, "speed_cpm": 24.0}, effects=["root"]),
    2: _spec({"current_a": 285.0, "voltage_v": 23.0, "speed_cpm": 25.0}, effects=["surge", "flash", "hole"]),
    3: _spec({"gas_bar": 0.0}, effects=["no_gas", "crackle", "pores"]),
    4: _spec({"gas_bar": 0.0, "current_a": 275.0, "speed_cpm": 24.0},
             effects=["no_gas", "crackle", "pores", "root"]),
    5: _spec({"voltage_v": 24.0, "speed_cpm": 35.0}, effects=["grooves"]),
    6: _spec({"speed_cpm": 23.0}, {"feed_mpm": 1.3}, effects=["lip"]),
    7: _spec({"current_a": 140.0, "voltage_v": 15.5}, effects=["seam_gap"]),
    8: _spec({"voltage_v": 15.0}, {"feed_mpm": 1.3}, effects=["convex"]),
    9: _spec({"voltage_v": 23.5}, effects=["unstable_arc", "crackle", "sparks", "spatter_dots"]),
    10: _spec(effects=["warp"]),
    11: _spec(effects=["abrupt_stop", "crack"]),
}


POSITIVE_SETTINGS = ("current_a", "voltage_v", "speed_cpm", "feed_mpm")  # > 0 in every weld (gas may be 0)


def toward(normal, defect, strength: float):
    """``normal`` moved toward ``defect`` by ``strength`` (0: normal, 1: exactly ``defect``, 2: twice as far).

    Every defect signature is scaled through this, so ``defect_strength: 1.0`` gives the documented
    signatures bit for bit and ``0.0`` a run that only its class code tells from a good one.
    """
    return defect if strength == 1.0 else normal + strength * (defect - normal)


def synergic_feed(current_a: float) -> float:
    """Wire feed (m/min) a synergic MIG/MAG power source sets for a current."""
    return 2.0 + 0.028 * current_a


@dataclass(frozen=True)
class Configuration:
    """One configuration folder: class, process settings, plate and look."""

    folder: str
    class_code: int
    number: int
    date: _dt.date
    preset: int
    weld_type: str
    thickness_mm: int
    steel: str
    current_a: float
    voltage_v: float
    gas_bar: float
    speed_cpm: float
    feed_mpm: float

    @property
    def effects(self) -> frozenset:
        return DEFECT_SPECS[self.class_code].effects


@dataclass(frozen=True)
class RunPlan:
    """One run to render: where it goes, its settings (with run-to-run variation) and its seed."""

    configuration: Configuration
    run_id: str
    index: int
    duration_s: float
    current_a: float
    voltage_v: float
    gas_bar: float
    speed_cpm: float
    feed_mpm: float
    start_time: _dt.datetime
    part_no: str
    entropy: tuple
    strength: float = 1.0  # synthetic.defect_strength: how far the class's signatures depart from good

    @property
    def subdir(self) -> str:
        return f"{self.configuration.folder}/{self.run_id}"

    @property
    def effects(self) -> frozenset:
        return self.configuration.effects

    def rng(self) -> np.random.Generator:
        """The run's own generator (independent of the order in which runs are rendered)."""
        return np.random.default_rng(np.random.SeedSequence(self.entropy))


def _configuration(class_code: int, preset: int, number: int, date: _dt.date, strength: float = 1.0) -> Configuration:
    base = dict(GOOD_PRESETS[preset])
    spec = DEFECT_SPECS[class_code]
    for key, value in spec.set.items():  # a defect changes only what its cause needs (warping keeps the good settings)
        base[key] = toward(base[key], value, strength)
    base["feed_mpm"] = synergic_feed(base["current_a"]) * toward(1.0, spec.scale.get("feed_mpm", 1.0), strength)
    for key, factor in spec.scale.items():
        if key != "feed_mpm":
            base[key] *= toward(1.0, factor, strength)
    for key in POSITIVE_SETTINGS:  # a strength > 1 extrapolates past the documented signature, maybe below zero
        if not base[key] > 0:
            raise ConfigError(f"synthetic.defect_strength {strength:g}: class {class_code:02d} "
                              f"({CLASS_NAMES[class_code]}) on good preset {preset} would get {key} = {base[key]:.4g}, "
                              "which no weld has (the signature is extrapolated that far); use a smaller "
                              "synthetic.defect_strength")
    geometry = "fillet_joint" if base["weld_type"] == "FILLET" else "plane_plate"
    suffix = "_BSK46" if base["steel"] == "BSK46" else ""
    folder = f"{CLASS_NAMES[class_code]}_weld_{number}_{date:%m-%d-%y}_{geometry}{suffix}"
    return Configuration(folder=folder, class_code=class_code, number=number, date=date, preset=preset, **base)


def plan_runs(seed: int, good_runs: int, runs_per_class: int, duration_s: float,
              defect_strength: float = 1.0) -> list[RunPlan]:
    """Configurations (4 good, 1-2 per defect class) and every run with its settings and seed.

    ``defect_strength`` scales every defect signature (settings and rendered effects) between the
    good preset (0) and the documented signature (1); the random draws stay the same, so the runs of
    two strengths differ only in how far their defects depart from good.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    first_day = _dt.date(2022, 11, 18)
    n_defect_cfg = 2 if runs_per_class >= 4 else 1
    jobs = [(0, preset, n) for preset, n in enumerate(_split(good_runs, len(GOOD_PRESETS)))]
    for code in sorted(c for c in CLASS_NAMES if c != 0):
        jobs += [(code, (code + j) % len(GOOD_PRESETS), n) for j, n in enumerate(_split(runs_per_class, n_defect_cfg))]
    plans: list[RunPlan] = []
    for cfg_index, (code, preset, n_runs) in enumerate(jobs):
        date = first_day + _dt.timedelta(days=3 * cfg_index)
        cfg = _configuration(code, preset, 10 + cfg_index, date, defect_strength)
        first_run = 100 + 37 * cfg_index
        for k in range(n_runs):
            run_no = first_run + k
            gas = cfg.gas_bar + rng.normal(0.0, 0.05) if "no_gas" not in cfg.effects else cfg.gas_bar
            plans.append(RunPlan(
                configuration=cfg,
                run_id=f"{date:%m-%d-%y}-{run_no:04d}-{code:02d}",
                index=len(plans),
                duration_s=float(duration_s * rng.uniform(0.85, 1.15)),
                current_a=float(cfg.current_a * (1.0 + rng.normal(0.0, 0.015))),
                voltage_v=float(cfg.voltage_v * (1.0 + rng.normal(0.0, 0.01))),
                gas_bar=float(max(gas, 0.0)),
                speed_cpm=float(cfg.speed_cpm * (1.0 + rng.normal(0.0, 0.01))),
                feed_mpm=float(cfg.feed_mpm * (1.0 + rng.normal(0.0, 0.01))),
                start_time=_dt.datetime.combine(date, _dt.time(8, 0)) + _dt.timedelta(minutes=4 * k),
                part_no=f"P{cfg.number:02d}-{run_no:04d}",
                entropy=(int(seed), 1, len(plans)),
                strength=float(defect_strength),
            ))
    return plans


def _split(total: int, parts: int) -> list[int]:
    """``total`` runs spread as evenly as possible over ``parts`` configurations."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
