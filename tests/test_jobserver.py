"""The warm job server: a job runs in a forked child with the client's streams, folder, environment and
exit status; killing the client kills the job; the server goes away when idle; when it is used."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from weldfilm import jobserver

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(__import__("socket"), "send_fds"),
                                                    reason="needs fork and SCM_RIGHTS")]

JOB = """
import os, sys, time
from weldfilm.jobserver import describe_process
print("job", os.getpid(), os.getcwd(), os.environ.get("JOB_VALUE"), sys.argv[1:])
print(describe_process())
print("to stderr", file=sys.stderr)
if os.environ.get("JOB_SLEEP"):
    open("job.pid", "w").write(str(os.getpid()))
    time.sleep(60)
if os.environ.get("JOB_RAISE"):
    raise RuntimeError("the job failed")
sys.exit(int(os.environ.get("JOB_EXIT", "0")))
"""
# a job process: hands `script` to the server at `socket`; the job sees the remaining arguments
CLIENT = ("import sys; from pathlib import Path; from weldfilm import jobserver; "
          "print('client', __import__('os').getpid(), flush=True); "
          "script, socket = sys.argv[1:3]; sys.argv = [script, *sys.argv[3:]]; "
          "status = jobserver.run_in_server(script, Path(socket)); "
          "sys.exit(99 if status is None else status)")


def wait_for(condition, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def start_server(path: Path, *options: str, env=None, seconds: float = 120) -> subprocess.Popen:
    """A server on ``path``, returned once it says it is listening."""
    import select

    process = subprocess.Popen([sys.executable, "-m", "weldfilm.jobserver", "--socket", str(path), *options],
                               stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not select.select([process.stdout], [], [], 1.0)[0]:
            continue  # still importing
        line = process.stdout.readline()
        if "listening on" in line or not line:
            break
    assert process.poll() is None and path.exists(), "the server did not start listening"
    return process


@pytest.fixture
def server(tmp_path):
    """A server without preloading on a socket in tmp_path; stopped after the test."""
    path = tmp_path / "s.sock"
    process = start_server(path, "--idle", "30", "--no-preload")
    yield path, process
    process.terminate()
    process.wait(timeout=10)


def run_client(path: Path, workdir: Path, **env) -> subprocess.Popen:
    script = workdir / "job.py"
    script.write_text(JOB)
    environment = {**os.environ, "JOB_VALUE": "from-the-client", **env}
    environment.pop(jobserver.CHILD_VAR, None)
    return subprocess.Popen([sys.executable, "-c", CLIENT, str(script), str(path), "an-arg"], cwd=workdir,
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_job_runs_in_a_forked_child_with_the_clients_streams_folder_environment_and_status(server, tmp_path):
    path, _ = server
    work = tmp_path / "work"
    work.mkdir()
    out, err = run_client(path, work).communicate(timeout=30)
    client_pid = int(out.split("client ")[1].split()[0])
    job_line = next(line for line in out.splitlines() if line.startswith("job "))
    job_pid, cwd, value, argv = job_line.split(" ", 4)[1:]
    assert int(job_pid) != client_pid and cwd == str(work) and value == "from-the-client"
    assert "run in the warm weldfilm job server" in out
    assert argv == "['an-arg']" and "to stderr" in err

    failing = run_client(path, work, JOB_EXIT="3")
    failing.communicate(timeout=30)
    assert failing.returncode == 3
    raising = run_client(path, work, JOB_RAISE="1")
    _, err = raising.communicate(timeout=30)
    assert raising.returncode == 1 and "RuntimeError: the job failed" in err


def test_killing_the_client_kills_its_job(server, tmp_path):
    path, _ = server
    client = run_client(path, tmp_path, JOB_SLEEP="1")
    assert wait_for((tmp_path / "job.pid").exists)
    job_pid = int((tmp_path / "job.pid").read_text())
    client.send_signal(signal.SIGKILL)
    client.wait(timeout=10)

    def job_gone():
        try:
            os.kill(job_pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{job_pid}/stat").is_file() and Path(f"/proc/{job_pid}/stat").read_text().split()[2] == "Z"
    assert wait_for(job_gone, 10), "the job outlived its client"


def test_an_idle_server_exits_and_removes_its_socket(tmp_path):
    path = tmp_path / "s.sock"
    process = subprocess.Popen([sys.executable, "-m", "weldfilm.jobserver", "--socket", str(path), "--idle", "0.5",
                                "--no-preload"])
    assert process.wait(timeout=30) == 0 and not path.exists()


def test_without_a_server_the_job_runs_in_its_own_process(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(jobserver, "start_server", started.append)
    assert jobserver.run_in_server("job.py", tmp_path / "none.sock") is None
    assert started == [tmp_path / "none.sock"]  # ... and a server is started for the jobs after it


def test_when_the_server_is_used_and_what_keys_it(monkeypatch):
    monkeypatch.setenv(jobserver.ENABLE_VAR, "1")
    monkeypatch.delenv(jobserver.CHILD_VAR, raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert jobserver.enabled()
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert not jobserver.enabled()  # a SLURM job runs on its own node: no server
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv(jobserver.CHILD_VAR, "1")
    assert not jobserver.enabled()  # a job inside the server never delegates again
    monkeypatch.setenv(jobserver.ENABLE_VAR, "0")
    monkeypatch.delenv(jobserver.CHILD_VAR)
    assert not jobserver.enabled()
    key = jobserver.server_key()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if os.environ.get("HF_HUB_OFFLINE") != "1" else "0")
    assert jobserver.server_key() != key  # the environment the imports saw is part of the key


THREADS_JOB = """
import json, sys
sys.path.insert(0, sys.argv[1])
from threadpoolctl import threadpool_info
import torch
before = sorted({pool["num_threads"] for pool in threadpool_info()})
from snakemake_job import limit_threads
limit_threads(1)
print(json.dumps({"before": before, "after": sorted({pool["num_threads"] for pool in threadpool_info()}),
                  "torch": torch.get_num_threads()}))
"""


def test_jobs_get_the_thread_counts_they_ask_for_whatever_started_the_server(tmp_path):
    # Snakemake gives a 2-thread job OMP/OPENBLAS/MKL_NUM_THREADS=2; if that job starts the server, the
    # preloaded pools must still start single-threaded (else BLAS sums differ from a fresh process's),
    # and each job's own count must reach the live pools
    path = tmp_path / "s.sock"
    env = {**os.environ, **dict.fromkeys(jobserver.THREAD_VARS, "2")}
    server = start_server(path, "--idle", "30", env=env)
    try:
        script = tmp_path / "threads.py"
        script.write_text(THREADS_JOB)
        scripts_dir = str(Path(__file__).resolve().parents[1] / "scripts")
        client = subprocess.run([sys.executable, "-c", CLIENT, str(script), str(path), scripts_dir], env=env,
                                capture_output=True, text=True, timeout=120)
        assert client.returncode == 0, client.stderr
        import json
        report = json.loads(client.stdout.strip().splitlines()[-1])
        assert report == {"before": [1], "after": [1], "torch": 1}
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_socket_path_too_long_for_the_system_means_no_server(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(jobserver, "start_server", started.append)
    assert jobserver.run_in_server("job.py", tmp_path / ("x" * 120 + ".sock")) is None and started == []


def test_a_server_that_cannot_serve_says_so_once(tmp_path, monkeypatch):
    path = tmp_path / "s.sock"

    def refuse():
        raise jobserver.RefusedError("a preloaded module initialised CUDA")
    monkeypatch.setattr(jobserver, "_preload", refuse)
    jobserver.serve(path, idle_timeout=1)
    assert not path.exists() and "CUDA" in Path(f"{path}.refused").read_text()
    spawned = []
    monkeypatch.setattr(jobserver.subprocess, "Popen", lambda *a, **k: spawned.append(a))
    jobserver.start_server(path)
    assert spawned == []  # jobs run in their own processes; no server is started again and again


def test_no_usable_socket_folder_means_the_job_runs_here(monkeypatch):
    def unwritable():
        raise PermissionError("read-only temp dir")
    monkeypatch.setattr(jobserver, "socket_dir", unwritable)
    assert jobserver.run_in_server("job.py") is None
