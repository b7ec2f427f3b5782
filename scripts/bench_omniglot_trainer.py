"""Omniglot meta-training throughput through the real trainer (host feed included).

Second-order 5-way 1-shot, 15 query images per class, meta-batch 32, one inner step, on
`configs/omniglot_minimal_5w1s.py`'s data, one device. Reports the steady tasks/s the
trainer logs (every interval after the first, which holds the compile), the XLA compile
time of the first training program, and host data time against the step time.

    python scripts/bench_omniglot_trainer.py --data_dir=../shared/data/omniglot \
        [--steps=150] [--log_every=30] [--num_query=15] [--task_batching=auto] \
        [--conv_impl=auto] [--data_placement=host] [--meta_batch=32] [--tasks_per_vmap=0]

`--conv_impl=auto` (the default) is the trainer's choice for the backend: "slices" on CPU
since maml_dist 0.5, "im2col" before, so the README's CPU numbers measured before 0.5 name
`--conv_impl=im2col`. The first line printed gives the conv as resolved.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import bench_record

from configs import omniglot
from maml_dist import meta_objective, metrics, models, trainer


def measure(
    data_dir: str,
    steps: int,
    log_every: int,
    num_query: int = 15,
    meta_batch: int = 32,
    task_batching: str = "auto",
    conv_impl: str = "auto",
    cache_dir: str = "",
    data_placement: str = "host",
    tasks_per_vmap: int = 0,
) -> dict:
    """Trains `steps` steps in a temporary workdir on the first device; returns the numbers.

    Args:
        data_dir: holds the minimal Omniglot sets (zipped or extracted).
        steps: meta-steps; the last one validates (2 tasks, 1 inner step) and checkpoints.
        log_every: steps per logged interval; the first interval holds the compile.
        num_query: query images per class.
        meta_batch: tasks per meta-step.
        task_batching: the config's task_batching ("auto": the backend's best).
        conv_impl: the config's model.conv_impl (likewise).
        cache_dir: where the decoded images are cached ("": the user's cache).
        data_placement: where episodes are drawn, "host" (the feed) or "device".
        tasks_per_vmap: the config's tasks_per_vmap (0: a device's tasks all at once).

    Returns:
        wall_s (the whole `train_and_evaluate` call), compiles (seconds of each XLA
        compile), steady (the logged records after the first), steady_tasks_per_sec
        (their median), and conv_impl and task_batching as run ("auto" resolved).
    """
    config = omniglot.get_config("minimal_5w1s")
    config.update(
        data_dir=data_dir,
        num_query=num_query,
        meta_batch_size=meta_batch,
        num_steps=steps,
        log_every=log_every,
        eval_every=steps,
        checkpoint_every=steps,
        eval_tasks=2,
        eval_inner_steps=1,
        task_batching=task_batching,
        data_placement=data_placement,
        tasks_per_vmap=tasks_per_vmap,
    )
    config.model.conv_impl = conv_impl
    config.omniglot.cache_dir = cache_dir
    with bench_record.compile_times() as compiles, tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        trainer.train_and_evaluate(config, workdir, jax.devices()[:1])
        wall = time.perf_counter() - t0
        records = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    steady = [r for r in records[1:] if "tasks_per_sec" in r]
    return {
        "wall_s": wall,
        "compiles": list(compiles),
        "steady": steady,
        "steady_tasks_per_sec": statistics.median(r["tasks_per_sec"] for r in steady),
        "conv_impl": models.resolve_conv_impl(conv_impl),
        "task_batching": meta_objective.resolve_batching(task_batching),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--log_every", type=int, default=30)
    parser.add_argument("--num_query", type=int, default=15)
    parser.add_argument("--task_batching", default="auto")
    parser.add_argument("--conv_impl", default="auto")
    parser.add_argument("--data_placement", default="host", choices=("host", "device"))
    parser.add_argument("--meta_batch", type=int, default=32)
    parser.add_argument("--tasks_per_vmap", type=int, default=0, help="0: all at once")
    args = parser.parse_args()
    r = measure(
        args.data_dir,
        args.steps,
        args.log_every,
        args.num_query,
        args.meta_batch,
        task_batching=args.task_batching,
        conv_impl=args.conv_impl,
        data_placement=args.data_placement,
        tasks_per_vmap=args.tasks_per_vmap,
    )
    compiles = r["compiles"]
    print(
        f"{jax.devices()[0].platform}, 1 device: 5-way 1-shot, {args.num_query} query/class, "
        f"meta-batch {args.meta_batch}, 1 inner step, second order, {r['conv_impl']} convs, "
        f"{r['task_batching']} task batching (tasks_per_vmap {args.tasks_per_vmap}); "
        f"{args.steps} steps in {r['wall_s']:.1f} s wall"
    )
    print(f"longest single XLA compile: {max(compiles):.1f} s ({len(compiles)} compiles)")
    print("| steps | tasks/s | data s/step (host, overlapped) | data wait s/step |")
    print("|---:|---:|---:|---:|")
    for rec in r["steady"]:
        data = [rec.get(k) for k in ("data_sec_per_step", "data_wait_sec_per_step")]
        data = " | ".join("-" if v is None else f"{v:.4f}" for v in data)  # "-": on the device
        print(f"| {rec['step']} | {rec['tasks_per_sec']:.1f} | {data} |")
    print(f"median steady throughput: {r['steady_tasks_per_sec']:.1f} tasks/s")


if __name__ == "__main__":
    main()
