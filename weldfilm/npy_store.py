"""Split-sized ``.npy`` arrays written batch by batch and read memory-mapped (imports no torch).

The frozen-encoder caches of M3DM and Dinomaly store one row per run of a split. ``NpyWriter`` fills
each array through a memory map on a temporary path beside its final name and moves every file into
place only when all rows arrived (``commit``); ``abort`` leaves nothing behind. Peak memory does not
grow with the split. ``build_lock`` serialises the jobs that want to build the same cache: one builds,
the others wait and then find it current.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from weldfilm.io import atomic_path


@contextlib.contextmanager
def build_lock(path: Path):
    """An exclusive lock beside ``path`` while one job builds it (no lock where the file system has none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except (ImportError, OSError):
            pass
        yield


class NpyWriter:
    """The ``.npy`` files ``{field: path}`` of one split, ``num_rows`` rows each, filled batch by batch.

    ``dtypes`` gives a field's stored dtype (default float32); the other dimensions come from the first batch.
    """

    def __init__(self, paths: dict[str, Path], num_rows: int, dtypes: dict | None = None, what: str = "cache"):
        self.paths, self.num_rows, self.what = paths, num_rows, what
        self.dtypes = dtypes or {}
        self._stack = contextlib.ExitStack()
        self.tmp = {field: self._stack.enter_context(atomic_path(path)) for field, path in paths.items()}
        self.arrays: dict[str, np.ndarray] = {}
        self.row = 0

    def write(self, batch: dict[str, np.ndarray]) -> None:
        """Append one batch: ``{field: array of (rows, ...)}``, the same rows for every field."""
        for field, values in batch.items():
            if field not in self.arrays:
                self.arrays[field] = np.lib.format.open_memmap(
                    self.tmp[field], mode="w+", dtype=self.dtypes.get(field, np.float32),
                    shape=(self.num_rows, *values.shape[1:]))
            self.arrays[field][self.row:self.row + len(values)] = values
        self.row += len(next(iter(batch.values())))

    def commit(self) -> None:
        """Flush and move every file into place (sidecars are written by the caller afterwards)."""
        if self.row != self.num_rows:
            raise RuntimeError(f"{self.what} got {self.row} of {self.num_rows} rows")
        for array in self.arrays.values():
            array.flush()
        self.arrays.clear()
        self._stack.close()

    def abort(self) -> None:
        """Drop the temporary files (nothing is moved into place)."""
        self.arrays.clear()
        self._stack.pop_all()
        for tmp in self.tmp.values():
            tmp.unlink(missing_ok=True)
