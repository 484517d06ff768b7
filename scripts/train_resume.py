"""When a training job may resume from its run folder's ``checkpoints/last.pt``.

Snakemake re-runs a killed job (``--rerun-incomplete``) but keeps ``checkpoints/*last.pt`` (not
declared outputs; late fusion keeps one per branch), so training continues where it stopped. ``resume_key.json`` records which run
config those checkpoints belong to: after a config change the old checkpoints are moved aside to
``checkpoints.stale/`` (said in the log) and training starts from scratch. The hash is
``weldfilm.run_keys.run_resume_hash``: what shapes the run (``run_shape_hash``, the rule's ``config_hash``
param) and, on synthetic data, the generator's settings (regenerated data must not resume old weights).
"""

from __future__ import annotations

import shutil
from pathlib import Path

RESUME_KEY = "resume_key.json"


def resume_allowed(run_dir: Path, config_hash: str) -> bool:
    """True when a ``*last.pt`` exists and was written for this exact run config; records the config."""
    from weldfilm.io import read_json, write_json

    run_dir = Path(run_dir)
    checkpoints = run_dir / "checkpoints"
    key_file = run_dir / RESUME_KEY
    same_config = key_file.is_file() and read_json(key_file, "resume key").get("config_hash") == config_hash
    if checkpoints.is_dir() and not same_config:
        stale = run_dir / "checkpoints.stale"
        shutil.rmtree(stale, ignore_errors=True)
        checkpoints.rename(stale)
        print(f"checkpoints of another run config moved to {stale}; training from scratch")
    write_json(key_file, {"config_hash": config_hash})
    return same_config and any(checkpoints.glob("*last.pt"))
