#!/usr/bin/env bash
# Runs maml_dist as NUM_PROCESSES processes on this machine, talking over loopback, each with
# DEVICES_PER_PROCESS fake CPU devices: the way to try multi-host training without a cluster.
#
#   launch/local.sh NUM_PROCESSES DEVICES_PER_PROCESS -- <maml_dist.train arguments>
#   launch/local.sh 2 4 -- --config=configs/sinusoid.py --workdir=runs/sinusoid_2x4
#
# Environment (optional):
#   MODULE=maml_dist.evaluate   run another entry point (default maml_dist.train)
#   LOG_DIR=DIR                 per-process logs (default: <workdir>/logs, else a temp dir)
#   PYTHON=python               the interpreter (default: python3, or .venv/bin/python if present)
#   PORT=N                      coordinator port (default: a free one)
#   DEADLINE=SECONDS            kill everything after this long (default: none)
#
# Process 0's log is echoed here; all logs stay in LOG_DIR. If any process fails, the others
# are killed (SIGKILL: after jax.distributed starts, JAX catches SIGTERM) and the exit status
# is the first failure's. SIGTERM to this script is passed to every process (a preemption:
# they save a checkpoint at the same step and exit 0); Ctrl-C kills them.
set -uo pipefail

if [[ $# -lt 3 || $3 != "--" ]]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
num=$1; per=$2; shift 3
if ! [[ $num =~ ^[1-9][0-9]*$ && $per =~ ^[1-9][0-9]*$ ]]; then
  echo "launch/local.sh: NUM_PROCESSES and DEVICES_PER_PROCESS must be positive integers" >&2
  exit 2
fi

cd "$(dirname "$0")/.."
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
module=${MODULE:-maml_dist.train}
port=${PORT:-$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

workdir=""
for arg in "$@"; do [[ $arg == --workdir=* ]] && workdir=${arg#--workdir=}; done
log_dir=${LOG_DIR:-${workdir:+$workdir/logs}}
log_dir=${log_dir:-$(mktemp -d)}
mkdir -p "$log_dir"

pids=()
kill_all() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; }
# SIGTERM is a preemption: every process gets it, saves a checkpoint at the same step and
# exits 0 (README, "Preemption"). Ctrl-C kills them all at once.
forward_term() {
  echo "launch/local.sh: SIGTERM: passing it on; the processes save a checkpoint and exit" >&2
  for p in "${pids[@]}"; do [[ -n $p ]] && kill -TERM "$p" 2>/dev/null; done
}
trap 'kill_all; exit 130' INT
trap forward_term TERM

for ((i = 0; i < num; i++)); do
  log="$log_dir/process_$i.log"
  JAX_PLATFORMS=cpu "$PYTHON" -m "$module" "$@" \
    --coordinator_address="127.0.0.1:$port" --num_processes="$num" --process_id="$i" \
    --cpu_devices="$per" >"$log" 2>&1 &
  pids+=($!)
done
echo "launch/local.sh: $num processes x $per devices, coordinator 127.0.0.1:$port, logs in $log_dir" >&2
tail -n +1 -F "$log_dir/process_0.log" 2>/dev/null &
tail_pid=$!

status=0
start=$SECONDS
remaining=$num
while ((remaining > 0)); do
  for idx in "${!pids[@]}"; do
    pid=${pids[$idx]}
    [[ -z $pid ]] && continue
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid"; rc=$?
      pids[$idx]=""
      remaining=$((remaining - 1))
      if ((rc != 0 && status == 0)); then
        status=$rc
        echo "launch/local.sh: process $idx exited with status $rc (log: $log_dir/process_$idx.log); stopping the others" >&2
        kill_all
      fi
    fi
  done
  if [[ -n ${DEADLINE:-} ]] && ((SECONDS - start > DEADLINE)); then
    echo "launch/local.sh: deadline of ${DEADLINE}s passed; killing all processes" >&2
    kill_all; status=124; break
  fi
  sleep 0.2
done
sleep 0.3
kill "$tail_pid" 2>/dev/null
exit "$status"
