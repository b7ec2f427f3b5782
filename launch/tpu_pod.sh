#!/usr/bin/env bash
# maml_dist on a multi-host Cloud TPU VM slice: the same command on every worker at once.
#
#   TPU_NAME=my-v5e-32 ZONE=us-west4-a launch/tpu_pod.sh setup
#   TPU_NAME=my-v5e-32 ZONE=us-west4-a launch/tpu_pod.sh train \
#       --config=configs/sinusoid.py --workdir=/mnt/shared/runs/sinusoid
#
# Edit: TPU_NAME, ZONE and PROJECT (or set them in the environment), REPO (where the code
# lives on the workers; `setup` copies this checkout there). The workdir must be a path
# every worker sees (e.g. a Filestore/NFS mount or gcsfuse): metrics.jsonl and TensorBoard
# are written by process 0 with ordinary file I/O, checkpoints by all workers through orbax.
# jax.distributed.initialize() auto-detects the TPU pod, so no coordinator flags are needed.
#
# Not tested here: the project's own machines have no TPU or gcloud. The multi-process code
# path is the one launch/local.sh exercises in the test suite.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REPO=${REPO:-maml_dist}

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all \
    --command="$1"
}

case "${1:-}" in
  setup)
    gcloud compute tpus tpu-vm scp --recurse "$(dirname "$0")/.." "$TPU_NAME:$REPO" \
      --zone="$ZONE" $PROJECT_FLAG --worker=all
    on_all_workers "cd $REPO && python3 -m venv .venv && .venv/bin/pip install -e . 'jax[tpu]'"
    ;;
  train|evaluate)
    module=maml_dist.$1; shift
    args=$(printf ' %q' "$@")
    on_all_workers "cd $REPO && .venv/bin/python -m $module$args"
    ;;
  *)
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
