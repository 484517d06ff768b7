"""A small causal welding simulator that writes a dataset in the real on-disk layout.

Each configuration folder fixes process settings (current, voltage, wire feed, shielding gas,
travel speed, plate thickness, steel, joint); they drive the sensor traces, the arc sound, the
melt-pool video and the post-weld bead photos of its runs. Each defect class has a physical
signature in named modalities (docs/synthetic.md has the full table):

| code | class | sensor CSV | sound | video | photos |
|---|---|---|---|---|---|
| 00 | good | 4 settings 170-245 A, 18-22 V, 2.5-4 bar, 25-33 cm/min | hum + hiss | steady arc | smooth rippled bead |
| 01 | excessive_penetration | 275 A, 24 cm/min | louder | bigger, brighter arc | wide dark oxidised root |
| 02 | burnthrough | 285 A, current surge + voltage jump | blast | white flash, then a hole | black hole in the bead |
| 03 | porosity | gas pressure and flow ~ 0 | crackle | red flickering arc, smoke | pores on the bead |
| 04 | porosity_w_excessive_penetration | gas ~ 0 + 275 A, 24 cm/min | crackle, louder | both | pores + dark root |
| 05 | undercut | 24 V, 35 cm/min | brighter hiss | wide flat arc | dark grooves at both edges |
| 06 | overlap | 23 cm/min, feed x1.3 | - | - | rolled-over lip with shadow |
| 07 | lack_of_fusion | 140 A, 15.5 V | quiet | small dim arc, faint bead | narrow bead, seam gap, breaks |
| 08 | excessive_convexity | 15 V, feed x1.3 | duller | narrow arc | tall narrow bead, white crown |
| 09 | spatter | voltage unstable, short circuits | crackle | sparks | droplets around the bead |
| 10 | warping | normal | normal | normal | bent plate and bead (result only) |
| 11 | crater_cracks | current ends abruptly | sound ends abruptly | arc vanishes | square end, crack in crater |

``generate(out_dir, seed, good_runs, runs_per_class, duration_s, ...)`` writes the dataset;
``weldfilm synth --out DIR`` is its command.
"""

from __future__ import annotations

import argparse
import json

from weldfilm.data.synthetic.generator import SETTINGS_FILE, SUMMARY_FILE, RenderOptions, generate
from weldfilm.data.synthetic.plan import DEFECT_SPECS, GOOD_PRESETS, plan_runs

__all__ = ["generate", "generate_from_config", "plan_runs", "RenderOptions", "DEFECT_SPECS", "GOOD_PRESETS",
           "SETTINGS_FILE", "SUMMARY_FILE", "add_cli_arguments", "cli"]


def generate_from_config(cfg: dict, out_dir=None, overwrite: bool = False) -> dict:
    """``generate`` with the config's ``synthetic`` section, into ``data.root`` unless ``out_dir`` is given."""
    return generate(out_dir or cfg["data"]["root"], **cfg["synthetic"], overwrite=overwrite)


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder to write the dataset into (new or empty)")
    parser.add_argument("--config", default=None, help="config.yaml whose `synthetic` section gives the defaults")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted config override, e.g. synthetic.video_size=64 (repeatable)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--good-runs", type=int, default=None)
    parser.add_argument("--runs-per-class", type=int, default=None)
    parser.add_argument("--duration", type=float, default=None, help="mean run duration in seconds")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (0 = auto, 1 = in-process)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier synthetic dataset in --out")


def cli(args: argparse.Namespace) -> int:
    from weldfilm.config import load_config, parse_set_args

    synthetic = dict(load_config(args.config, parse_set_args(args.set))["synthetic"])
    given = {"seed": args.seed, "good_runs": args.good_runs, "runs_per_class": args.runs_per_class,
             "duration_s": args.duration, "workers": args.workers}
    synthetic.update({key: value for key, value in given.items() if value is not None})
    summary = generate(args.out, **synthetic, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0
