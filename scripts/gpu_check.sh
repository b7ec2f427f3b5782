#!/usr/bin/env bash
# One pass of GPU checks for a lent accelerator machine: the trainer end to end (sinusoid
# paper config; Omniglot minimal 20-way 1-shot with the backend defaults), then the
# Omniglot step throughput for every task batching x conv implementation and the inner-step
# cost table. Every part has its own time limit; a failing part does not stop the others.
#
#   OUT=DIR DATA=FOLDER_WITH_OMNIGLOT_ZIPS scripts/gpu_check.sh
#
# Writes DIR/gpu_check.log (all output) and the runs' results.json / metrics.jsonl.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
DATA=${DATA:-data/omniglot}
PY=${PYTHON:-python3}
RUNS=${RUNS:-/tmp/gpu_runs}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
LOG=$OUT/gpu_check.log

part() {  # part NAME SECONDS COMMAND...: runs one check, logs its exit status and wall time
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc wall=$((SECONDS - t0))s" | tee -a "$LOG"
}

{ nvidia-smi -L; $PY -c 'import jax, flax, optax; print("jax", jax.__version__, "flax",
  flax.__version__, "optax", optax.__version__, jax.devices())'; } >>"$LOG" 2>&1

part sinusoid_train 100 $PY -m maml_dist.train --config=configs/sinusoid.py \
  --workdir="$RUNS/sinusoid"
part sinusoid_eval 40 $PY -m maml_dist.evaluate --workdir="$RUNS/sinusoid"
cp "$RUNS/sinusoid/eval/results.json" "$OUT/sinusoid_results.json" 2>/dev/null
cp "$RUNS/sinusoid/metrics.jsonl" "$OUT/sinusoid_metrics.jsonl" 2>/dev/null

part omniglot20_train 150 $PY -m maml_dist.train --config=configs/omniglot_minimal_20w1s.py \
  --workdir="$RUNS/omniglot20" --config.data_dir="$DATA" --config.checkpoint_every=250
part omniglot20_eval 50 $PY -m maml_dist.evaluate --workdir="$RUNS/omniglot20"
cp "$RUNS/omniglot20/eval/results.json" "$OUT/omniglot20_results.json" 2>/dev/null
cp "$RUNS/omniglot20/metrics.jsonl" "$OUT/omniglot20_metrics.jsonl" 2>/dev/null

part omniglot_step 80 $PY scripts/bench_omniglot_step.py --reps=5 --steps=5 \
  --batchings=vmap,loop --conv_impls=xla,im2col
part inner_steps 120 $PY scripts/bench_inner_steps.py --reps=3 --steps=1,10,100 \
  --algorithms=maml,fomaml,imaml --json="$OUT/bench_inner_steps_gpu.json"
exit 0
