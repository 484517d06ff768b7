"""The real dataset's on-disk layout (shared/spec/dataset.md): class codes, run ids, run discovery.

A run folder is named ``MM-DD-YY-NNNN-CC`` (date, run number, two-digit class code) and holds
``<run>.csv``, ``<run>.flac``, ``<run>.avi`` and ``images/*.jpg``. Runs are found by that pattern at
any depth below the data root. A run is identified by its path relative to the root
(``<configuration folder>/<run id>``, the manifest's SUBDIRS), because the same run id can occur in
two configuration folders.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from weldfilm.errors import DataError

CLASS_NAMES: dict[int, str] = {
    0: "good",
    1: "excessive_penetration",
    2: "burnthrough",
    3: "porosity",
    4: "porosity_w_excessive_penetration",
    5: "undercut",
    6: "overlap",
    7: "lack_of_fusion",
    8: "excessive_convexity",
    9: "spatter",
    10: "warping",
    11: "crater_cracks",
}
RUN_ID_PATTERN = re.compile(r"^\d{2}-\d{2}-\d{2}-\d{4}-\d{2}$")
SENSOR_COLUMNS = ["Date", "Time", "Part No", "Pressure", "CO2 Weld Flow", "Feed", "Primary Weld Current",
                  "Wire Consumed", "Secondary Weld Voltage", "Remarks"]
NUMERIC_SENSOR_COLUMNS = ["Pressure", "CO2 Weld Flow", "Feed", "Primary Weld Current", "Wire Consumed",
                          "Secondary Weld Voltage"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def class_code_of(run_id: str) -> int:
    """The class code (0..11) from the last two digits of a run id; DataError if unknown."""
    if not RUN_ID_PATTERN.match(run_id):
        raise DataError(f"run {run_id}: not a run id of the form MM-DD-YY-NNNN-CC")
    code = int(run_id[-2:])
    if code not in CLASS_NAMES:
        raise DataError(f"run {run_id}: unknown class code {code:02d} (known: 00..11, see shared/spec/dataset.md)")
    return code


def binary_label(class_code: int) -> int:
    """good (00) -> 0, every defect -> 1."""
    return 0 if class_code == 0 else 1


@dataclass(frozen=True)
class RunRef:
    """One run: its id, its folder relative to the data root (SUBDIRS) and its class code."""

    run_id: str
    subdir: str
    class_code: int

    @property
    def label(self) -> int:
        return binary_label(self.class_code)

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.class_code]

    @property
    def configuration(self) -> str:
        return str(Path(self.subdir).parent)

    def files(self, data_root: str | os.PathLike) -> dict[str, Path]:
        """Paths of the run's four modalities under ``data_root``."""
        folder = Path(data_root) / self.subdir
        return {
            "csv": folder / f"{self.run_id}.csv",
            "flac": folder / f"{self.run_id}.flac",
            "avi": folder / f"{self.run_id}.avi",
            "images": folder / "images",
        }


def run_ref(subdir: str) -> RunRef:
    """A RunRef from a SUBDIRS value; the run id is its last path component."""
    run_id = Path(subdir).name
    return RunRef(run_id=run_id, subdir=Path(subdir).as_posix(), class_code=class_code_of(run_id))


def discover_runs(data_root: str | os.PathLike) -> list[RunRef]:
    """All run folders below ``data_root`` at any depth, sorted by SUBDIRS.

    Raises DataError for a missing or empty root and for a run folder with an unknown class code.
    """
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist or is not a folder (set data.root in config.yaml)")
    runs = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        keep = []
        for name in dirnames:
            if RUN_ID_PATTERN.match(name):
                runs.append(run_ref(os.path.relpath(os.path.join(dirpath, name), root)))
            elif not name.startswith("."):
                keep.append(name)
        dirnames[:] = keep  # do not descend into run folders (images/ lives there)
    if not runs:
        raise DataError(f"data root {root} holds no run folder named MM-DD-YY-NNNN-CC; is data.root right?")
    return sorted(runs, key=lambda r: r.subdir)
