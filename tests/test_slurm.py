"""The workflow through a real single-node SLURM cluster (marker ``slurm``).

Starts Debian's slurmctld + slurmd + munge without systemd (tests/slurm/start-slurm.sh, two fake GPUs
through gres.conf), runs a small version of the default workflow with workflow/profiles/slurm plus a
test overlay, and checks that every non-local job went through sbatch, that the GPU rules asked for
a GPU, and that the paper's numbers equal those of a local run with the same seeds. Needs root and
apt (CI runs as root on Debian 12); elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from test_workflow import SNAKEFILE, TINY_DATA, make_workdir, run_snakemake
from weldfilm.config import REPO_ROOT

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SLURM_SCRIPTS = REPO_ROOT / "tests" / "slurm"
SLURM_DIR = Path(os.environ.get("WELDFILM_SLURM_DIR", "/tmp/weldfilm-slurm"))
SLURM_PROFILE = REPO_ROOT / "workflow" / "profiles" / "slurm" / "config.yaml"
LOCAL_RULES = {"all", "manifest", "dataset_card", "tables", "figures", "paper"}
# one train job per method and seed (train_causal_film also trains the ablations)
GPU_RULES = {"features", "train_causal_film", "train_late_fusion", "evaluate", "evaluate_ablation"}
# the default workflow at tiny sizes: every rule (both protocols, an ablation), two methods, one seed;
# scoring as jobs of their own so that the evaluate rules go through SLURM too
SMALL_RUN = {"merge": {**TINY_DATA, "train": {"epochs": 2}, "workflow": {"evaluate_in_train_job": False}},
             "replace": {"seeds": [0], "methods": ["causal_film", "late_fusion"],
                         "ablations": {"no_film": {"causal_film.use_film": False}}}}


def skip_reason() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "starting SLURM daemons and installing them with apt needs root on Linux"
    if not (shutil.which("apt-get") and shutil.which("dpkg-query")):
        return "needs apt/dpkg (Debian or Ubuntu) to install slurmctld, slurmd and munge"
    return None


@pytest.fixture(scope="module")
def slurm_env():
    """Environment of a running test cluster; the daemons are stopped (by recorded PIDs) afterwards."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "WELDFILM_SLURM_DIR": str(SLURM_DIR)}
    try:
        started = subprocess.run(["timeout", "-k", "10", "600", str(SLURM_SCRIPTS / "start-slurm.sh")], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if started.returncode == 3:
            pytest.skip(f"no test cluster possible here: {started.stdout.strip()[-500:]}")
        assert started.returncode == 0, started.stdout
        yield env
    finally:
        subprocess.run(["timeout", "-k", "10", "120", str(SLURM_SCRIPTS / "stop-slurm.sh")], env=env)


def profile_for_test_cluster(tmp_path: Path) -> Path:
    """workflow/profiles/slurm as shipped, with what the test cluster needs changed."""
    profile = yaml.safe_load(SLURM_PROFILE.read_text())
    profile.update({
        "slurm-status-command": "squeue",  # no accounting database: sacct cannot work
        "seconds-between-status-checks": 1,
        "slurm-init-seconds-before-status-checks": 1,
        "latency-wait": 5,
        "retries": 0,
        "jobs": 4,
    })
    profile["default-resources"] = {"slurm_partition": "debug", "runtime": 30, "mem_mb": 500}
    for resources in profile["set-resources"].values():
        resources.update({"slurm_partition": "debug", "mem_mb": 500})
    profile["set-threads"] = {rule: 1 for rule in profile["set-threads"]}  # the node has few CPUs
    folder = tmp_path / "profile"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder


def slurm_job_info(job_id: str, env: dict) -> dict[str, str]:
    """``scontrol show job`` as {field: value} (kept for an hour: MinJobAge in start-slurm.sh)."""
    shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True, text=True,
                           check=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", shown))


def paper_numbers(workdir: Path) -> pd.DataFrame:
    return pd.read_csv(workdir / "results" / "paper" / "tables" / "main.csv").set_index("method").sort_index()


def test_workflow_through_slurm_matches_a_local_run(slurm_env, tmp_path):
    cluster_dir = make_workdir(tmp_path / "slurm", **SMALL_RUN)
    command = ["timeout", "-k", "10", "1500", sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE),
               "--workflow-profile", str(profile_for_test_cluster(tmp_path))]
    through_slurm = subprocess.run(command, cwd=cluster_dir, env=slurm_env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
    output = through_slurm.stdout
    assert through_slurm.returncode == 0, output[-5000:]

    # every non-local job was an sbatch job of its rule; GPU rules asked for a GPU
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", output)
    cluster_jobs = [rule for rule in re.findall(r"^rule (\w+):$", output, flags=re.M) if rule not in LOCAL_RULES]
    assert len(submitted) == len(cluster_jobs) > 0
    rules_seen = set()
    for job_id in submitted:
        info = slurm_job_info(job_id, slurm_env)
        assert info["JobState"] == "COMPLETED", info
        rule = re.match(r"rule_([a-z_]+?)(_wildcards_|$)", info["Comment"]).group(1)
        rules_seen.add(rule)
        asks_gpu = "gpu" in info.get("TresPerJob", "") + info.get("TresPerNode", "")
        assert asks_gpu == (rule in GPU_RULES), (rule, info.get("TresPerJob"), info.get("TresPerNode"))
    assert GPU_RULES <= rules_seen and {"synthesize", "validate", "tiny_backbones"} <= rules_seen

    # the same numbers as a local run of the same config
    local_dir = make_workdir(tmp_path / "local", **SMALL_RUN)
    local = run_snakemake(local_dir, "--cores", "2", timeout=1500)
    assert local.returncode == 0, local.stdout[-5000:]
    from_slurm, from_local = paper_numbers(cluster_dir), paper_numbers(local_dir)
    assert list(from_slurm.columns) == list(from_local.columns)
    numeric = from_local.select_dtypes("number").columns
    assert len(numeric) > 0
    for column in numeric:
        for method in from_local.index:
            a, b = from_slurm.at[method, column], from_local.at[method, column]
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6, abs=1e-9), (method, column)
