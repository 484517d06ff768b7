#!/usr/bin/env bash
# Start a throw-away single-node SLURM cluster for tests/test_slurm.py (Debian 12, root, no systemd).
#
# State, spool, logs, the munge key and socket and the daemons' PID files live below
# $WELDFILM_SLURM_DIR (default /tmp/weldfilm-slurm). slurm.conf and gres.conf must be in /etc/slurm:
# Snakemake's SLURM plugin clears SLURM_* variables (SLURM_CONF too) inside jobs, so the srun it
# calls there only finds the default path. A slurm.conf there that this script did not write is
# never touched (exit 3: no test cluster on a machine that has a real one).
# Installs munge, slurmctld, slurmd, slurm-client with apt when missing (exit 3 if that fails).
# One node "localhost", one partition "debug", $WELDFILM_SLURM_GPUS fake GPUs (1 or 2) backed by
# /dev/null and /dev/zero: jobs that ask --gpus get CUDA_VISIBLE_DEVICES but no device.
# Stop with stop-slurm.sh, which kills only the PIDs recorded here.
set -euo pipefail

BASE=${WELDFILM_SLURM_DIR:-/tmp/weldfilm-slurm}
NGPUS=${WELDFILM_SLURM_GPUS:-2}
NODE=localhost
HERE=$(cd "$(dirname "$0")" && pwd)
CONF_DIR=/etc/slurm
MARKER="# throw-away test cluster written by tests/slurm/start-slurm.sh"
started=$(date +%s)

say() { echo "start-slurm: $*" >&2; }

# 1. packages (apt only when something is missing; policy: nothing auto-starts without systemd)
missing=()
for package in munge slurmctld slurmd slurm-client; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"${TMPDIR:-/tmp}/weldfilm-slurm-apt.log" 2>&1; then
    apt-get update -q >>"${TMPDIR:-/tmp}/weldfilm-slurm-apt.log" 2>&1 || true
    apt-get install -y -q --no-install-recommends "${missing[@]}" >>"${TMPDIR:-/tmp}/weldfilm-slurm-apt.log" 2>&1 ||
      { say "cannot install ${missing[*]} with apt (see ${TMPDIR:-/tmp}/weldfilm-slurm-apt.log)"; exit 3; }
  fi
fi

if [ -e "$CONF_DIR/slurm.conf" ] && [ "$(head -n 1 "$CONF_DIR/slurm.conf")" != "$MARKER" ]; then
  say "$CONF_DIR/slurm.conf exists and is not ours: this machine has a SLURM setup, leaving it alone"
  exit 3
fi

# 2. a clean start: stop what an earlier run left, then fresh state
if compgen -G "$BASE/pids/*.pid" >/dev/null; then
  "$HERE/stop-slurm.sh" || true
fi
rm -rf "$BASE"/{state,spool,log,munge}   # only what this script creates, never $BASE itself
mkdir -p "$BASE"/{state,spool,log,pids,munge} "$CONF_DIR"
chmod 0700 "$BASE/munge"

# 3. munged with its own key and socket (root needs --force; the key never leaves $BASE)
dd if=/dev/urandom of="$BASE/munge/munge.key" bs=1024 count=1 status=none
chmod 0400 "$BASE/munge/munge.key"
MUNGE_SOCKET=$BASE/munge/munge.socket
/usr/sbin/munged --force --key-file="$BASE/munge/munge.key" --socket="$MUNGE_SOCKET" \
  --pid-file="$BASE/pids/munged.pid" --log-file="$BASE/log/munged.log" --seed-file="$BASE/munge/seed"
for _ in $(seq 50); do [ -S "$MUNGE_SOCKET" ] && break; sleep 0.1; done
munge --socket="$MUNGE_SOCKET" -n | unmunge --socket="$MUNGE_SOCKET" >/dev/null

# 4. slurm.conf + gres.conf (memory: what the machine has free, so small jobs run side by side)
CPUS=$(nproc)
MEM_MB=$(awk '/MemAvailable/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
GPU_FILES=/dev/null
[ "$NGPUS" -ge 2 ] && { NGPUS=2; GPU_FILES=/dev/null,/dev/zero; }
cat >"$CONF_DIR/slurm.conf" <<EOF
$MARKER
ClusterName=weldfilm-test
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
SchedulerType=sched/backfill
ReturnToService=2
# finished jobs stay visible to squeue/scontrol for an hour (no accounting database here)
MinJobAge=3600
CommunicationParameters=NoInAddrAny
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/pids/slurmctld.pid
SlurmdPidFile=$BASE/pids/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:$NGPUS State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
# a gpu gres without File= drains the node: any existing file stands in for a device
cat >"$CONF_DIR/gres.conf" <<EOF
$MARKER
AutoDetect=off
NodeName=$NODE Name=gpu File=$GPU_FILES
EOF

# 5. daemons (they daemonize and write their PID files into $BASE/pids)
/usr/sbin/slurmctld
/usr/sbin/slurmd -N "$NODE"

# 6. ready when the node is idle; then one GPU job end to end
state=""
for _ in $(seq 60); do
  state=$(sinfo -h -N -n "$NODE" -o %t 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 0.5
done
if [ "$state" != idle ]; then
  say "node $NODE is '$state', not idle"
  scontrol show node "$NODE" >&2 || true
  tail -n 20 "$BASE"/log/*.log >&2 || true
  exit 1
fi
timeout -k 5 60 srun -t 1 --gpus=1 true
say "node $NODE idle ($CPUS CPUs, $MEM_MB MB, gpu:$NGPUS) in $(($(date +%s) - started)) s"
