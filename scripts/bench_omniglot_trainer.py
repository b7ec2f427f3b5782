"""Omniglot meta-training throughput through the real trainer (host feed included).

Second-order 5-way 1-shot, 15 query images per class, meta-batch 32, one inner step, on
`configs/omniglot_minimal_5w1s.py`'s data, one device. Reports the steady tasks/s the
trainer logs (every interval after the first, which holds the compile), the XLA compile
time of the first training program, and host data time against the step time.

    python scripts/bench_omniglot_trainer.py --data_dir=../shared/data/omniglot \
        [--steps=150] [--log_every=30] [--num_query=15]
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
import jax.monitoring

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import omniglot
from maml_dist import metrics, trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--log_every", type=int, default=30)
    parser.add_argument("--num_query", type=int, default=15)
    parser.add_argument("--task_batching", default="auto")
    parser.add_argument("--conv_impl", default="auto")
    args = parser.parse_args()

    config = omniglot.get_config("minimal_5w1s")
    config.update(
        data_dir=args.data_dir,
        num_query=args.num_query,
        num_steps=args.steps,
        log_every=args.log_every,
        eval_every=args.steps,
        checkpoint_every=args.steps,
        eval_tasks=2,
        eval_inner_steps=1,
        task_batching=args.task_batching,
    )
    config.model.conv_impl = args.conv_impl
    compiles = []

    def on_event(event: str, seconds: float, **_) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        trainer.train_and_evaluate(config, workdir, jax.devices()[:1])
        wall = time.perf_counter() - t0
        records = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    steady = [r for r in records[1:] if "tasks_per_sec" in r]
    print(
        f"{jax.devices()[0].platform}, 1 device: 5-way 1-shot, {args.num_query} query/class, "
        f"meta-batch 32, 1 inner step, second order; {args.steps} steps in {wall:.1f} s wall"
    )
    print(f"longest single XLA compile: {max(compiles):.1f} s ({len(compiles)} compiles)")
    print("| steps | tasks/s | data s/step (host, overlapped) | data wait s/step |")
    print("|---:|---:|---:|---:|")
    for r in steady:
        print(
            f"| {r['step']} | {r['tasks_per_sec']:.1f} | {r['data_sec_per_step']:.4f} | "
            f"{r['data_wait_sec_per_step']:.4f} |"
        )
    rate = statistics.median(r["tasks_per_sec"] for r in steady)
    print(f"median steady throughput: {rate:.1f} tasks/s")


if __name__ == "__main__":
    main()
