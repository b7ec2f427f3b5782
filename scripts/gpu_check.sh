#!/usr/bin/env bash
# One pass of GPU checks for a lent accelerator machine, each part under its own time limit
# (a failing part does not stop the others):
#   1. the sinusoid paper config end to end, twice in fresh workdirs: the first compiles
#      into an empty persistent compilation cache, the second loads from it;
#   2. Omniglot minimal 5-way 1-shot for every algorithm, 500 meta-steps each (the CPU
#      table's command), train + meta-test, with the wall time of each training process;
#   3. the Omniglot step (vmap + XLA conv) at meta-batch 32 (maml, anil, fomaml), 128 and
#      512 (maml), with XLA's FLOP count per task.
#
#   OUT=DIR DATA=FOLDER_WITH_OMNIGLOT_ZIPS scripts/gpu_check.sh
#
# Writes DIR/gpu_check.log (all output) and JSON results.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
DATA=${DATA:-data/omniglot}
PY=${PYTHON:-python3}
RUNS=${RUNS:-/tmp/gpu_runs}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export XDG_CACHE_HOME=$RUNS/cache  # an empty compilation cache to start from
LOG=$OUT/gpu_check.log

part() {  # part NAME SECONDS COMMAND...: runs one check, logs its exit status and wall time
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local t0=$EPOCHREALTIME
  timeout "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc wall=$(awk "BEGIN{printf \"%.1f\", $EPOCHREALTIME - $t0}")s" \
    | tee -a "$LOG"
}

{ nvidia-smi -L; $PY -c 'import jax, flax, optax; print("jax", jax.__version__, "flax",
  flax.__version__, "optax", optax.__version__, jax.devices())'; } >>"$LOG" 2>&1

for run in cold warm; do
  part "sinusoid_train_$run" 45 $PY -m maml_dist.train --config=configs/sinusoid.py \
    --workdir="$RUNS/sinusoid_$run"
done
part sinusoid_eval 30 $PY -m maml_dist.evaluate --workdir="$RUNS/sinusoid_cold"
cp "$RUNS/sinusoid_cold/eval/results.json" "$OUT/sinusoid_results.json" 2>/dev/null
du -sh "$RUNS/cache" >>"$LOG" 2>&1

part omniglot_algorithms 280 $PY scripts/compare_algorithms.py \
  --config=configs/omniglot_minimal_5w1s.py --algorithms=maml,anil,fomaml,metasgd,reptile,imaml \
  --seeds=0 --root="$RUNS" --name=omni500 --config.data_dir="$DATA" --config.num_steps=500 \
  --config.eval_every=500 --config.checkpoint_every=500 --reptile.config.inner_steps=5 \
  --imaml.config.inner_steps=5 --json="$OUT/omniglot_minimal_5w1s_algorithms_500.json"

part omniglot_step_mb32 60 $PY scripts/bench_omniglot_step.py --reps=5 --steps=5 \
  --batchings=vmap --conv_impls=xla --algorithms=maml,anil,fomaml --meta_batch=32
part omniglot_step_mb128 55 $PY scripts/bench_omniglot_step.py --reps=5 --steps=5 \
  --batchings=vmap --conv_impls=xla --algorithms=maml --meta_batch=128
part omniglot_step_mb512 80 $PY scripts/bench_omniglot_step.py --reps=5 --steps=5 \
  --batchings=vmap --conv_impls=xla --algorithms=maml --meta_batch=512
exit 0
