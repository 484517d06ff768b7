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


def limit_threads(threads: int) -> None:
    """Let the job's numeric libraries use exactly the cores Snakemake gave it: the environment for
    libraries not loaded yet, and the live pools (torch, BLAS, OpenMP) of those already loaded (in a
    job server child they were loaded by the server)."""
    from threadpoolctl import threadpool_limits

    from weldfilm.jobserver import THREAD_VARS

    os.environ.update(dict.fromkeys(THREAD_VARS, str(threads)))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    threadpool_limits(limits=threads)


def _hand_to_job_server() -> None:
    """Let the warm job server (weldfilm/jobserver.py) run this job when it is on; exit with its status."""
    from weldfilm import jobserver

    script = getattr(sys.modules["__main__"], "__real_file__", None)  # Snakemake's generated script
    if script and jobserver.enabled():
        status = jobserver.run_in_server(script)
        if status is not None:
            sys.exit(status)


def run_job(snakemake, job: Callable[[dict, Any], Any]) -> None:
    """Run ``job(cfg, snakemake)`` with its output in the rule's log.

    A ``WeldfilmError`` (bad data, config, checkpoint) ends the job with its message in the log and
    on the console and exit status 1, without a traceback; any other error keeps its traceback.
    """
    _hand_to_job_server()
    console = _redirect_output(Path(snakemake.log[0]))
    from weldfilm.jobserver import describe_process

    print(describe_process())
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
