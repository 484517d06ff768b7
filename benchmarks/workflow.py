"""Wall time of the default workflow from a cold start, and where it goes.

Runs ``snakemake --cores all --resources gpu=1`` (the README's command, the default profile) in a fresh
temporary working directory with the project's ``config.yaml``, then prints the total wall time, the
number of jobs, the CPU time of Snakemake and its jobs (user and kernel: the kernel share is what
``workflow.tune_malloc`` cuts) and the summed job time per rule (from the "done in X s" line every job logs).

    python benchmarks/workflow.py [--keep DIR] [--set key=value ...]   (e.g. --set "seeds=[0]")
    side by side: the same with --set "workflow={tune_malloc: false}" or "workflow={seeds_together: []}"
"""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DONE = re.compile(r"^(\w+) \(.*\): done in ([0-9.]+) s$", re.M)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="run in this folder and keep it (default: a temporary folder)")
    parser.add_argument("--set", nargs="*", default=[], help="top-level config overrides key=YAML value")
    args = parser.parse_args()
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="weldfilm-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for item in args.set:
        key, value = item.split("=", 1)
        config[key] = yaml.safe_load(value)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"),
               "--cores", "all", "--resources", "gpu=1", "--quiet", "rules"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # Snakemake and every job it waited for
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-3000:], sep="\n")
        return result.returncode
    per_rule: dict[str, list[float]] = defaultdict(list)
    for log in (workdir / config.get("results", "results") / "logs").rglob("*.log"):
        for rule, seconds in DONE.findall(log.read_text(errors="replace")):
            per_rule[rule].append(float(seconds))
    print(f"default workflow: {wall:.0f} s wall, {sum(len(v) for v in per_rule.values())} jobs, in {workdir}")
    print(f"CPU: {usage.ru_utime:.0f} s user, {usage.ru_stime:.0f} s kernel, {usage.ru_minflt / 1e6:.1f} M page faults")
    print(f"{'rule':<20}{'jobs':>6}{'sum s':>10}{'mean s':>10}")
    for rule, times in sorted(per_rule.items(), key=lambda kv: -sum(kv[1])):
        print(f"{rule:<20}{len(times):>6}{sum(times):>10.1f}{sum(times) / len(times):>10.1f}")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
