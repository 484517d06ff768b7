"""A warm job server for the workflow's local jobs: heavy imports once, one forked child per job.

Each Snakemake job of the workflow is a new Python process, and on a small run most of its time is
imports (torch ~2 s, scikit-learn ~1.5 s, torch._dynamo ~1.4 s at the first optimizer, transformers'
model code ~2 s). With the job server, a job's script process (the *client*) hands its work to a
server that imported those modules once and forks a child per job:

* the client sends its script path (Snakemake's generated script, preamble included), argv, working
  folder and environment, and passes its stdin/stdout/stderr over a Unix socket (SCM_RIGHTS);
* the child takes them over, re-runs that script (with ``WELDFILM_JOB_SERVER_CHILD=1`` so it does
  not delegate again) and exits with the job's status, which the client then returns to Snakemake;
* if the client dies (SIGKILL of the job or of the whole Snakemake process group) the server kills
  the child's process group at once, so a killed job stops as it would without the server; a child
  also dies with the server (Linux ``PR_SET_PDEATHSIG``);
* a server serves one (interpreter, weldfilm source, relevant environment, network namespace): code
  edits or another environment get a fresh server; it exits after ``idle_timeout`` s without jobs.

When no server is running, the client starts one in the background (its own session) and runs its
job itself; the jobs after it go through the server. ``WELDFILM_JOB_SERVER=0`` (the Snakefile sets it
from ``workflow.job_server``) or a SLURM job environment turns it off. Logs of a server:
``<socket>.log`` in ``socket_dir()``.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENABLE_VAR = "WELDFILM_JOB_SERVER"
IDLE_VAR = "WELDFILM_JOB_SERVER_IDLE"  # seconds a server started by a job waits for the next one
CHILD_VAR = "WELDFILM_JOB_SERVER_CHILD"
IDLE_TIMEOUT_S = 120.0
# environment that changes what imported modules decide at import time: part of the server key
KEY_ENV_PREFIXES = ("HF_", "TRANSFORMERS_", "TORCH", "PYTORCH", "CUDA", "PYTHON", "LD_", "CONDA_PREFIX", "VIRTUAL_ENV")
PRELOAD = (
    "numpy", "pandas", "torch", "torch._dynamo", "sklearn.metrics", "scipy.ndimage", "safetensors.torch", "yaml",
    "jsonschema", "snakemake.script", "weldfilm.methods", "weldfilm.evaluation", "weldfilm.runner",
    "weldfilm.causal_film_method", "weldfilm.features", "weldfilm.models.backbones", "weldfilm.models.causal_film",
    "weldfilm.baselines.late_fusion", "weldfilm.baselines.m3dm", "weldfilm.baselines.dinomaly",
    "transformers.models.vjepa2.modeling_vjepa2", "transformers.models.audio_spectrogram_transformer",
    "transformers.models.dinov3_vit.modeling_dinov3_vit", "transformers.models.vit.modeling_vit",
    "transformers.models.dinov2_with_registers.modeling_dinov2_with_registers", "transformers.models.clip",
)
# the thread-count variables Snakemake sets for a job; native pools read them once, when first loaded
THREAD_VARS = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
_HEADER = struct.Struct("!I")
ACCEPTED = b"A"
MAX_SOCKET_PATH = 100  # bytes; the system limit is 104-108


def enabled() -> bool:
    """Whether jobs should go through a server here: asked for, not a server child, not in a SLURM job,
    and the platform can fork and pass file descriptors."""
    return (os.environ.get(ENABLE_VAR, "0") == "1" and os.environ.get(CHILD_VAR) != "1"
            and "SLURM_JOB_ID" not in os.environ and hasattr(os, "fork") and hasattr(socket, "send_fds"))


def describe_process() -> str:
    """One line for a job's log: whether this process is a job server child."""
    if os.environ.get(CHILD_VAR) == "1":
        return f"run in the warm weldfilm job server (job pid {os.getpid()}, server pid {os.getppid()})"
    return f"run in its own process (pid {os.getpid()}; job server {'on' if enabled() else 'off'})"


def socket_dir() -> Path:
    path = Path(tempfile.gettempdir()) / f"weldfilm-jobs-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def server_key() -> str:
    """What a server's imported state depends on: interpreter, weldfilm's source, environment, network."""
    package = Path(__file__).resolve().parent
    stamps = sorted((str(p.relative_to(package)), p.stat().st_mtime_ns, p.stat().st_size) for p in package.rglob("*.py"))
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(KEY_ENV_PREFIXES))
    try:
        netns = os.stat("/proc/self/ns/net").st_ino  # a job in `unshare -n` must not run in a networked server
    except OSError:
        netns = None
    blob = json.dumps([sys.executable, sys.version, str(package), stamps, env, netns])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def socket_path(key: str | None = None) -> Path:
    return socket_dir() / f"{key or server_key()}.sock"


# ---------------------------------------------------------------------------------------------- client
def _send_request(sock: socket.socket, payload: bytes, fds) -> None:
    """Length-prefixed ``payload`` with ``fds`` attached (SCM_RIGHTS); the rest if the first send was short."""
    data = _HEADER.pack(len(payload)) + payload
    sent = socket.send_fds(sock, [data], list(fds))
    sock.sendall(data[sent:])


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = b""
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed")
        chunks += chunk
    return chunks


def run_in_server(script: str, path: Path | None = None) -> int | None:
    """Run ``script`` (this process's argv, cwd, env and stdio) in the server; its exit status.

    None when no server accepted the job (then this process runs it itself, and a server is started
    for the jobs after it). A server that vanishes mid-job is an error (status 1, said on stderr).
    """
    try:
        path = path or socket_path()
    except OSError:
        return None  # no usable folder for the socket (a read-only temp dir): the job runs here
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        return None  # a Unix socket path this long cannot be bound (a long TMPDIR): no server
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(str(path))
    except OSError:
        client.close()
        try:
            start_server(path)
        except OSError:
            pass  # the server is an optimisation: without it the job simply runs here
        return None
    with client:
        request = json.dumps({"script": script, "argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ)})
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            _send_request(client, request.encode(), (0, 1, 2))
            if _receive_exactly(client, len(ACCEPTED)) != ACCEPTED:
                raise ConnectionError("unexpected answer")
        except (ConnectionError, OSError):
            return None  # the server was closing and never started the job: run it here
        try:
            status = _HEADER.unpack(_receive_exactly(client, _HEADER.size))[0]
        except (ConnectionError, OSError) as exc:
            print(f"weldfilm job server {path} ended before the job did ({exc}); see {path}.log, "
                  f"re-run the workflow (or set workflow.job_server: false)", file=sys.stderr)
            return 1
    return 256 - status if status > 255 else status  # > 255: killed by signal (256 + signum) -> -signum


def start_server(path: Path, idle_timeout: float | None = None) -> None:
    """Start a server for ``path`` in the background (its own session); a no-op if one is starting.
    ``idle_timeout``: default ``$WELDFILM_JOB_SERVER_IDLE`` or 120 s."""
    if idle_timeout is None:
        idle_timeout = float(os.environ.get(IDLE_VAR, IDLE_TIMEOUT_S))
    if Path(f"{path}.refused").exists():
        return  # a server for this key found it cannot serve here (see the file)
    lock = Path(f"{path}.lock")
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # a server holds the lock: it is starting or running
        fcntl.flock(handle, fcntl.LOCK_UN)
    with open(f"{path}.log", "a") as log:
        subprocess.Popen([sys.executable, "-m", "weldfilm.jobserver", "--socket", str(path), "--idle", str(idle_timeout)],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
                         env={k: v for k, v in os.environ.items() if k != CHILD_VAR})


# ---------------------------------------------------------------------------------------------- server
def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the server that forked it dies."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _run_child(request: dict, fds: list[int]) -> int:
    """In the forked child: become the job process and run its script; the job's exit status."""
    import runpy
    import traceback

    os.setpgid(0, 0)  # its own group: the server kills the job and anything it started together
    _die_with_parent()
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ[CHILD_VAR] = "1"
    sys.argv = list(request["argv"])
    try:
        runpy.run_path(request["script"], run_name="__main__")
        return 0
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - the job's own failure, reported like an uncaught one
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


class RefusedError(RuntimeError):
    """This environment cannot host a server; ``<socket>.refused`` keeps jobs from starting another."""


def _preload() -> None:
    import importlib
    import warnings

    # Pools start single-threaded, whatever the job that started the server had; each job then sets its
    # own count (scripts/snakemake_job.limit_threads), so a job's numbers do not depend on which job
    # happened to start the server (a 2-thread BLAS sums in another order than a 1-thread one).
    os.environ.update(dict.fromkeys(THREAD_VARS, "1"))
    # torch.cuda.is_available() through NVML, without initialising the CUDA driver before the fork
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    for name in PRELOAD:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a job that needs it will raise its own error
            print(f"preload {name}: {exc}", flush=True)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise RefusedError("a preloaded module initialised CUDA, so forked jobs could not use it")


def serve(path: Path, idle_timeout: float = IDLE_TIMEOUT_S, preload: bool = True) -> None:
    """Accept jobs on ``path`` until ``idle_timeout`` seconds pass with no job running or arriving."""
    lock_handle = open(f"{path}.lock", "a")
    try:
        fcntl.flock(lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # another server for this key won the race
    path.unlink(missing_ok=True)  # a socket left by a server that died (we hold the lock)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))  # before the slow preload: a path the system refuses fails at once
    if preload:
        try:
            _preload()
        except RefusedError as exc:
            Path(f"{path}.refused").write_text(f"{exc}\n")
            print(f"no job server: {exc}", flush=True)
            path.unlink(missing_ok=True)
            return
    listener.listen(64)  # until now a client's connect is refused and it runs its job itself
    print(f"{time.strftime('%H:%M:%S')} job server {os.getpid()} listening on {path}", flush=True)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    last_activity = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            if path.exists() and not children and time.monotonic() - last_activity >= idle_timeout:
                path.unlink()  # no new client can connect; the ones already queued are still served
                last_activity = time.monotonic()
            elif not path.exists() and not children and not selector.select(timeout=0):
                break
            for key, _ in selector.select(timeout=0.05):
                if key.fileobj is listener:
                    connection, _ = listener.accept()
                    pid = _start_job(connection, [listener, *children.values()])
                    if pid is not None:
                        children[pid] = connection
                        selector.register(connection, selectors.EVENT_READ, pid)
                    last_activity = time.monotonic()
                elif not key.fileobj.recv(1):  # the client is gone: stop its job (reaped below)
                    selector.unregister(key.fileobj)
                    _kill_group(key.data)
            for pid, status in _reaped(children):
                connection = children.pop(pid)
                if connection in [key.fileobj for key in selector.get_map().values()]:
                    selector.unregister(connection)
                try:
                    connection.sendall(_HEADER.pack(status if status >= 0 else 256 - status))
                except OSError:
                    pass
                connection.close()
                last_activity = time.monotonic()
    finally:
        for pid in children:
            _kill_group(pid)
        path.unlink(missing_ok=True)
        listener.close()


def _start_job(connection: socket.socket, others: list[socket.socket]) -> int | None:
    """Read one job request and fork its child; the child's pid (None for a broken request).
    The client gets one byte once the child exists, then the 4-byte exit status when it ends."""
    try:
        message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
        size = _HEADER.unpack(message[:_HEADER.size])[0]
        payload = message[_HEADER.size:]
        if len(payload) < size:
            payload += _receive_exactly(connection, size - len(payload))
        request = json.loads(payload)
    except (OSError, ValueError, ConnectionError, struct.error) as exc:
        print(f"bad job request: {exc}", flush=True)
        connection.close()
        return None
    pid = os.fork()
    if pid == 0:  # the job: keeps none of the server's sockets
        for sock in (*others, connection):
            sock.close()
        code = 1
        try:
            code = _run_child(request, fds)
        finally:
            os._exit(code if 0 <= code <= 255 else 1)
    for fd in fds:
        os.close(fd)
    try:
        connection.sendall(ACCEPTED)
    except OSError:
        pass  # the client is gone already: the selector sees it and kills the job
    print(f"{time.strftime('%H:%M:%S')} job {pid}: {request['script']}", flush=True)
    return pid


def _reaped(children: dict[int, socket.socket]):
    """(pid, exit status) of every finished child; a signal becomes -signum."""
    for pid in list(children):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            yield pid, os.waitstatus_to_exitcode(status)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="weldfilm's warm job server (started by the workflow's jobs)")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--idle", type=float, default=IDLE_TIMEOUT_S, help="seconds without jobs before it exits")
    parser.add_argument("--no-preload", action="store_true", help="import nothing ahead (tests)")
    args = parser.parse_args(argv)
    serve(Path(args.socket), args.idle, preload=not args.no_preload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
