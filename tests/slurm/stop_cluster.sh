#!/usr/bin/env bash
# Stop the daemons tests/slurm/start_cluster.sh DIR started (by the ids in DIR/started.pids), and no others.
set -uo pipefail
DIR=$(realpath -m "${1:?usage: stop_cluster.sh DIR}")
[ -f "$DIR/started.pids" ] || exit 0
mapfile -t PIDS < <(tac "$DIR/started.pids")   # slurmd, slurmctld, then munged
if [ -f "$DIR/slurm.conf" ]; then   # cancel what is still queued, so no job outlives the cluster
    SLURM_CONF="$DIR/slurm.conf" timeout 10 scancel --quiet -u "$(id -un)" 2>/dev/null || true
fi
for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
done
# slurmd (configless) left a link to its cached config for the node's commands: remove it if it is ours
case "$(readlink /run/slurm/conf 2>/dev/null)" in "$DIR"/*) rm -f /run/slurm/conf ;; esac
rm -f "$DIR/started.pids"
