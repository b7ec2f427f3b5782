#!/usr/bin/env bash
# One pass of GPU checks for a lent accelerator machine, under 8 minutes in all; each part
# has its own time limit (a failing part does not stop the others):
#   1. scripts/benchmark.py, every standard setting (docs/benchmarks.md "Benchmarks"): the sinusoid
#      paper run into an empty compilation cache and again from it, the Omniglot 5-way
#      1-shot step and trainer (episodes drawn on the device, then the host feed) at
#      meta-batch 32/128/512, meta-batch 512 also in vmapped groups of 128
#      (config.tasks_per_vmap), the sinusoid step on 1 and 2 processes; one JSON record
#      per setting in DIR/benchmark.jsonl. A time budget makes it skip (with a record
#      saying so) what would not fit;
#   2. the meta-test of that cold sinusoid run: its accuracy on this backend.
# With ALGORITHMS=1, also Omniglot minimal 5-way 1-shot for every algorithm, 500 meta-steps
# each (the CPU table's command), train + meta-test: about 280 s more, past the 8 minutes.
#
#   OUT=DIR [DATA=FOLDER_WITH_OMNIGLOT_ZIPS] [ALGORITHMS=1] scripts/gpu_check.sh
#
# BENCH_ARGS adds arguments to benchmark.py's (a dry run of the script on a CPU:
# BENCH_ARGS="--quick --settings=sinusoid_paper").
#
# Without the minimal Omniglot sets in DATA, the trainer settings run on generated images
# (the speed does not depend on what the images show). Python packages missing on the
# machine come in through PYTHONPATH, which is kept. Writes DIR/gpu_check.log (all output),
# DIR/benchmark.jsonl and DIR/sinusoid_results.json.
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
  # SIGKILL 10 s after the SIGTERM, should anything ignore it.
  timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc wall=$(awk "BEGIN{printf \"%.1f\", $EPOCHREALTIME - $t0}")s" \
    | tee -a "$LOG"
}

{ nvidia-smi -L; $PY -c 'import jax, flax, optax; print("jax", jax.__version__, "flax",
  flax.__version__, "optax", optax.__version__, jax.devices())'; } >>"$LOG" 2>&1

data_arg=()
if [[ -e $DATA/images_background_small1.zip || -d $DATA/images_background_small1 ]]; then
  data_arg=(--data_dir="$DATA")
fi
# benchmark.py kills each child at its deadline and stops starting settings when its
# budget is spent; the outer limit is the backstop. The trainer settings run 60 steps
# (three logged intervals of 20, the first holding the compile) to fit.
part benchmark 410 $PY scripts/benchmark.py --out="$OUT/benchmark.jsonl" \
  --workdir_root="$RUNS/bench" --budget_s=390 --deadline_s=150 \
  --trainer_steps=60 --trainer_log_every=20 "${data_arg[@]}" ${BENCH_ARGS:-}

part sinusoid_eval 40 $PY -m maml_dist.evaluate --workdir="$RUNS/bench/sinusoid_paper"
cp "$RUNS/bench/sinusoid_paper/eval/results.json" "$OUT/sinusoid_results.json" 2>/dev/null

if [[ ${ALGORITHMS:-0} == 1 ]]; then
  part omniglot_algorithms 280 $PY scripts/compare_algorithms.py \
    --config=configs/omniglot_minimal_5w1s.py --algorithms=maml,anil,fomaml,metasgd,reptile,imaml \
    --seeds=0 --root="$RUNS" --name=omni500 --config.data_dir="$DATA" --config.num_steps=500 \
    --config.eval_every=500 --config.checkpoint_every=500 --reptile.config.inner_steps=5 \
    --imaml.config.inner_steps=5 --json="$OUT/omniglot_minimal_5w1s_algorithms_500.json"
fi
exit 0
