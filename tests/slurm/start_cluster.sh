#!/usr/bin/env bash
# Start a throwaway single-node Slurm cluster for the workflow tests (no systemd needed).
#
#   tests/slurm/start_cluster.sh DIR      (as root; Debian or Ubuntu)
#
# Installs slurm-wlm and munge with apt when they are missing, writes DIR/slurm.conf (state,
# spool, logs and the job-completion records all under DIR), and starts munged (unless one
# already answers), slurmctld and slurmd as plain background processes. Prints `export
# SLURM_CONF=DIR/slurm.conf` on the last line; every Slurm command and daemon reads that file.
# The ids of the daemons it started are in DIR/started.pids, one per line: stop_cluster.sh
# stops exactly those. If a cluster already answers (`scontrol ping` with the host's own
# config), nothing is started and the last line is empty. Exit status 3: cannot run here
# (not root, or the packages cannot be installed), with the reason on stderr.
set -euo pipefail
DIR=$(realpath -m "${1:?usage: start_cluster.sh DIR}")
mkdir -p "$DIR"
skip() { echo "cannot start a Slurm cluster: $*" >&2; exit 3; }

if command -v scontrol >/dev/null && [ -z "${SLURM_CONF:-}" ] && timeout 10 scontrol ping 2>/dev/null | grep -q "is UP"; then
    echo "a Slurm cluster is already running (scontrol ping); using it" >&2
    echo ""
    exit 0
fi
[ "$(id -u)" = 0 ] || skip "not root (installing packages and starting daemons needs root)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    command -v apt-get >/dev/null || skip "slurm-wlm is not installed and there is no apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >"$DIR/apt.log" 2>&1 \
        || { apt-get update -qq >>"$DIR/apt.log" 2>&1 && apt-get install -y -qq --no-install-recommends slurm-wlm munge >>"$DIR/apt.log" 2>&1; } \
        || skip "apt-get install slurm-wlm munge failed (see $DIR/apt.log): $(tail -n 2 "$DIR/apt.log" | tr '\n' ' ')"
fi

: >"$DIR/started.pids"
# munge: reuse a running munged; else start one as the munge user on the default socket.
if ! (munge -n 2>/dev/null | unmunge >/dev/null 2>&1); then
    id munge >/dev/null 2>&1 || skip "no munge user (the munge package did not install cleanly)"
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 0755 /run/munge
    [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground >"$DIR/munged.out" 2>&1 &
    echo $! >>"$DIR/started.pids"
    for _ in $(seq 100); do (munge -n 2>/dev/null | unmunge >/dev/null 2>&1) && break; sleep 0.1; done
    (munge -n | unmunge >/dev/null) || skip "munged did not start ($(cat "$DIR/munged.out"))"
fi

# The node offers at least 8 CPUs and 16 GB whatever the machine has (config_overrides):
# nothing enforces them here (task/none, no cgroups), and the test jobs are small and mostly
# wait (interpreter start-up, the scheduler), so a 2-core machine runs 8 side by side.
CPUS=$(( $(nproc) > 8 ? $(nproc) : 8 ))
AVAIL_MB=$(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo)
MEM_MB=$(( AVAIL_MB * 3 / 4 > 16000 ? AVAIL_MB * 3 / 4 : 16000 ))
mkdir -p "$DIR/state" "$DIR/spool"
cat >"$DIR/slurm.conf" <<CONF
ClusterName=gradscope-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SlurmctldParameters=enable_configless
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.txt
MinJobAge=600
InactiveLimit=0
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=gsnode NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=test Nodes=gsnode Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$DIR/slurm.conf"

/usr/sbin/slurmctld -D -i -f "$SLURM_CONF" >"$DIR/slurmctld.out" 2>&1 &
echo $! >>"$DIR/started.pids"
/usr/sbin/slurmd -D -N gsnode --conf-server 127.0.0.1 >"$DIR/slurmd.out" 2>&1 &
echo $! >>"$DIR/started.pids"

for _ in $(seq 150); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qx 'idle'; then
        echo "Slurm is up: node gsnode, $CPUS CPUs, $MEM_MB MB, partition test ($SLURM_CONF)" >&2
        echo "export SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 0.2
done
echo "Slurm did not come up; logs:" >&2
tail -n 20 "$DIR"/slurmctld.log "$DIR"/slurmd.log "$DIR"/*.out >&2 || true
exit 1
