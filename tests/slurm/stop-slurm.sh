#!/usr/bin/env bash
# Stop the test cluster that start-slurm.sh started: cancel its jobs, end each daemon by the PID it
# recorded (only if that PID still runs the expected program), remove its config. Safe to run twice.
set -uo pipefail

BASE=${WELDFILM_SLURM_DIR:-/tmp/weldfilm-slurm}

if [ -s "$BASE/pids/slurmctld.pid" ]; then
  jobs=$(timeout -k 2 10 squeue -h -o %i 2>/dev/null || true)
  [ -n "$jobs" ] && timeout -k 2 10 scancel $jobs 2>/dev/null
fi

stop_daemon() {  # stop_daemon PROGRAM PIDFILE
  local program=$1 pidfile=$2 pid
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if [ "$(ps -o comm= -p "$pid" 2>/dev/null)" = "$program" ]; then
    kill -TERM "$pid"
    for _ in $(seq 100); do  # up to 10 s; a zombie counts as gone
      case "$(ps -o stat= -p "$pid" 2>/dev/null)" in '' | Z*) break ;; esac
      sleep 0.1
    done
    case "$(ps -o stat= -p "$pid" 2>/dev/null)" in '' | Z*) ;; *) kill -KILL "$pid" ;; esac
  fi
  rm -f "$pidfile"
}

stop_daemon slurmd "$BASE/pids/slurmd.pid"
stop_daemon slurmctld "$BASE/pids/slurmctld.pid"
stop_daemon munged "$BASE/pids/munged.pid"
# the config files start-slurm.sh wrote (recognised by its first line; anything else stays)
for conf in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
  [ "$(head -n 1 "$conf" 2>/dev/null)" = "# throw-away test cluster written by tests/slurm/start-slurm.sh" ] && rm -f "$conf"
done
echo "stop-slurm: stopped" >&2
