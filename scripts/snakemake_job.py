"""Start-up shared by the workflow's scripts: the checkout's package, the job's log, clean errors.

Every ``scripts/<rule>.py`` is a few lines: it defines ``job(cfg, snakemake)`` and calls
``run_job(snakemake, job)``. ``cfg`` is the validated config (profile applied, defaults filled),
made by the same ``weldfilm.config.prepare`` as in the Snakefile.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # inside a conda env of envs/*.yaml the package is not installed
    sys.path.insert(0, str(REPO_ROOT))


def _redirect_output(log_path: Path):
    """Send this process's stdout and stderr (C level too) to the log; return a stream to the console."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    console = os.fdopen(os.dup(2), "w", buffering=1)
    sys.stdout.flush()
    sys.stderr.flush()
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return console


# the thread-count variables of native pools (OpenMP, BLAS, numexpr), read once, when a library loads
THREAD_VARS = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def limit_threads(threads: int) -> None:
    """Let the job's numeric libraries use exactly the cores Snakemake gave it: the environment for the
    libraries the job has not imported yet (torch, numpy's BLAS), and the pools of any already loaded."""
    os.environ.update(dict.fromkeys(THREAD_VARS, str(threads)))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    if "numpy" in sys.modules:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)


def run_job(snakemake, job: Callable[[dict, Any], Any]) -> None:
    """Run ``job(cfg, snakemake)`` with its output in the rule's log.

    A ``WeldfilmError`` (bad data, config, checkpoint) ends the job with its message in the log and
    on the console and exit status 1, without a traceback; any other error keeps its traceback.
    """
    console = _redirect_output(Path(snakemake.log[0]))
    print(f"pid {os.getpid()}, {snakemake.threads} thread(s)")
    limit_threads(snakemake.threads)
    from weldfilm.config import prepare
    from weldfilm.errors import WeldfilmError

    where = f"{snakemake.rule} ({', '.join(f'{k}={v}' for k, v in snakemake.wildcards.items()) or 'no wildcards'})"
    started = time.perf_counter()
    try:
        job(prepare(dict(snakemake.config)), snakemake)
        print(f"{where}: done in {time.perf_counter() - started:.1f} s")
    except WeldfilmError as exc:
        message = f"{where}: error: {exc}"
        print(message, file=sys.stderr)
        console.write(message + f"\n(log: {snakemake.log[0]})\n")
        sys.exit(1)
    except Exception:
        console.write(f"{where}: failed; traceback in {snakemake.log[0]}\n")
        raise
