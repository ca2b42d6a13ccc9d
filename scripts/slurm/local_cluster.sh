#!/usr/bin/env bash
# A real SLURM cluster on this machine for the cluster tests (`make test-cluster`): munged, slurmctld
# and two slurmd node daemons (n1, n2: one host, distinct ports), all in a temporary folder and
# listening on 127.0.0.1 only. Runs the given command with SLURM_CONF pointing at it, then cancels
# every job and stops every daemon it started (by pid), whatever happened; exits with the
# command's status.
#
#   scripts/slurm/local_cluster.sh .venv/bin/python -m pytest -q -m cluster tests/cluster
#
# Needs root (the daemons run as root; Debian's packages are installed when missing).
# Each node declares the whole machine's cores and memory: the two nodes share one host.
set -euo pipefail

[[ $# -gt 0 ]] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "local_cluster.sh: the SLURM daemons need root (running as uid $(id -u))" >&2; exit 2; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
  || ! command -v munged >/dev/null; then
  echo "local_cluster.sh: installing slurmctld slurmd slurm-client munge" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null; }
fi

DIR=$(mktemp -d /tmp/pha-slurm.XXXXXX)
chmod 755 "$DIR" # munged requires its socket's folders to be searchable by all
PIDS=()

stop() {
  local status=$?
  set +e
  if [[ -f "$DIR/slurm.conf" ]] && [[ ${#PIDS[@]} -gt 1 ]]; then
    # cancel what is left, and give the nodes time to end the job steps they started
    scancel --quiet --user="$(id -un)" 2>/dev/null
    for _ in $(seq 60); do
      [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break
      sleep 1
    done
  fi
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[i]}" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null
  done
  if [[ $status -ne 0 && -d "$DIR/log" ]]; then
    echo "local_cluster.sh: daemon logs (exit $status):" >&2
    tail -n 20 "$DIR"/log/*.out >&2
  fi
  rm -rf "$DIR"
  exit "$status"
}
trap stop EXIT
trap 'exit 130' INT TERM

mkdir -p "$DIR"/{munge,state,spool/n1,spool/n2,log}
chmod 755 "$DIR/munge"
head -c 1024 /dev/urandom >"$DIR/munge/munge.key"
chmod 400 "$DIR/munge/munge.key"

# free TCP ports on 127.0.0.1: controller, default slurmd port, node n1, node n2
read -r CTLD_PORT SLURMD_PORT N1_PORT N2_PORT < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)
HOST=$(hostname)
# this host's cores and memory, as slurmd measures them
read -r CPUS MEMORY < <(slurmd -C | sed -n 's/.* CPUs=\([0-9]*\) .* RealMemory=\([0-9]*\).*/\1 \2/p')

cat >"$DIR/slurm.conf" <<EOF
ClusterName=phatest
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/socket
# bind to the address the host name resolves to (127.0.0.1 above), not to every interface
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
KillWait=15
MinJobAge=600
NodeName=n1 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$N1_PORT CPUs=$CPUS RealMemory=$MEMORY State=UNKNOWN
NodeName=n2 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$N2_PORT CPUs=$CPUS RealMemory=$MEMORY State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$DIR/slurm.conf

# foreground daemons started in the background: $! is each daemon's own pid (each logs to $DIR/log/<daemon>.out)
munged --foreground --socket="$DIR/munge/socket" --key-file="$DIR/munge/munge.key" \
  --log-file=/dev/null --pid-file="$DIR/munge/munged.pid" --seed-file="$DIR/munge/seed" \
  >"$DIR/log/munged.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do [[ -S "$DIR/munge/socket" ]] && break; sleep 0.2; done
slurmctld -D -f "$SLURM_CONF" >"$DIR/log/slurmctld.out" 2>&1 &
PIDS+=($!)
for node in n1 n2; do
  slurmd -D -f "$SLURM_CONF" -N "$node" >"$DIR/log/slurmd-$node.out" 2>&1 &
  PIDS+=($!)
done

for _ in $(seq 60); do
  [[ $(sinfo -h -N -o %t 2>/dev/null | sort -u) == idle ]] && break
  sleep 1
done
if [[ $(sinfo -h -N -o %t 2>/dev/null | sort -u) != idle ]]; then
  echo "local_cluster.sh: the nodes did not come up idle within 60 s:" >&2
  sinfo -N >&2 || true
  exit 1
fi
echo "local_cluster.sh: SLURM cluster up in $DIR (controller 127.0.0.1:$CTLD_PORT, nodes n1 n2 with $CPUS CPUs and $MEMORY MB each)" >&2

set +e
"$@"
