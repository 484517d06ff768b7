"""Progress of long loops (rate and ETA) that reads well both on a terminal and in a job's log file.

``progress(iterable, desc, total=None, unit="it")`` wraps ``iterable`` in tqdm writing to stderr:

- on a terminal: the usual live bar, refreshed at most every 0.5 s and cleared at the end;
- in a file (a workflow job's log, where stderr is redirected): one plain line per update, at most
  every ``WELDFILM_PROGRESS_INTERVAL`` seconds (default 30), plus a final line with the totals and
  the mean rate. No carriage returns, no cursor movements: the log stays readable with ``less``.

``WELDFILM_PROGRESS=0`` turns it off. Every long loop of the package (feature extraction, epochs,
scoring passes, M3DM memory bank and coreset, Dinomaly epochs) uses this one helper.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")

TTY_INTERVAL_S = 0.5
DEFAULT_LOG_INTERVAL_S = 30.0
LOG_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_CONTROL = re.compile(r"\r|\n|\x1b\[[0-9;]*[A-Za-z]")


class _LogTqdm(tqdm):
    """tqdm for a log file: ``set_postfix`` updates the next line instead of writing one of its own."""

    def set_postfix(self, ordered_dict=None, refresh=False, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_description(self, desc=None, refresh=False):
        super().set_description(desc, refresh=False)


class _LineStream:
    """A file-like target for tqdm that turns its in-place redraws into plain lines."""

    def __init__(self, stream):
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> None:
        line = _CONTROL.sub("", text).rstrip()
        if line and line != self.last:  # the closing redraw repeats the last update: written once
            self.stream.write(line + "\n")
            self.last = line

    def flush(self) -> None:
        self.stream.flush()


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def log_interval_s() -> float:
    """Seconds between two progress lines in a log file (``WELDFILM_PROGRESS_INTERVAL``, default 30)."""
    try:
        return max(float(os.environ.get("WELDFILM_PROGRESS_INTERVAL", DEFAULT_LOG_INTERVAL_S)), 0.0)
    except ValueError:
        return DEFAULT_LOG_INTERVAL_S


def enabled() -> bool:
    return os.environ.get("WELDFILM_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "off")


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it",
             stream=None, nested: bool = False) -> Iterator[T]:
    """``iterable`` with progress on stderr (or ``stream``): rate and ETA; see the module doc.

    Returns a tqdm object (iterate it; ``set_postfix`` works); with ``total=None`` it is taken from
    ``len(iterable)`` where that exists. ``nested=True`` (the batches of one epoch, a validation pass
    inside a fit): in a log file it writes only once the loop has lasted one interval, so short inner
    loops add no lines; the outer loop's lines carry the job's progress.
    """
    stream = stream if stream is not None else sys.stderr
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    tty = _is_tty(stream)
    interval = TTY_INTERVAL_S if tty else log_interval_s()
    if tty:
        return tqdm(iterable, desc=desc, total=total, unit=unit, file=stream, mininterval=interval,
                    leave=False, dynamic_ncols=True, disable=not enabled())
    return _LogTqdm(iterable, desc=desc, total=total, unit=unit, file=_LineStream(stream), mininterval=interval,
                    maxinterval=max(interval, 10.0), leave=True, bar_format=LOG_FORMAT if total else None,
                    delay=interval if nested else 0.0, disable=not enabled())


def library_bars_to_logs() -> None:
    """In a log file (stderr not a terminal), silence the live bars of transformers / huggingface_hub
    (checkpoint loading and writing): they redraw with carriage returns, one unreadable line in a log."""
    if _is_tty(sys.stderr):
        return
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass
