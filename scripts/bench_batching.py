"""Meta-step time for each task batching ("vmap" | "loop") and reduction ("sum" | "ordered").

Sinusoid paper setting (meta-batch 25, K=10, one inner step), interleaved repetitions in
one process so the four variants see the same machine load.

    python scripts/bench_batching.py [--cpu_devices=1]   # 25 tasks pad to a multiple of N
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu_devices", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=500, help="meta-steps per timing")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()

    import jax  # device count must be set first

    jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    sys.path.insert(0, str(ROOT))
    from configs import sinusoid
    from maml_dist import algorithms, parallel, tasks
    from maml_dist import state as state_lib

    mesh = parallel.make_mesh()
    runs = {}
    for batching, reduction in itertools.product(parallel.BATCHINGS, parallel.REDUCTIONS):
        config = sinusoid.get_config()
        config.update({"task_batching": batching, "reduction": reduction})
        family = tasks.make_task_family(config)
        model = family.make_model()
        loss_fn = algorithms.make_loss_fn(model, family.loss)
        tx, _ = state_lib.make_meta_optimizer(config)

        def sample_fn(key, family=family, config=config):
            return family.sample(key, config.shots, config.num_query)

        spec = parallel.meta_batch_spec(config, loss_fn, sample_fn)
        run = parallel.make_multi_step(
            parallel.make_train_step(parallel.make_meta_grad_fn(spec, mesh), tx)
        )
        state = jax.jit(
            lambda model=model, family=family, tx=tx: state_lib.create_train_state(
                model, family.example_input(), tx, 0
            ),
            out_shardings=parallel.replicated(mesh),
        )()
        state, _ = run(state, args.chunk)  # compile + warm up
        jax.block_until_ready(state)
        runs[(batching, reduction)] = [run, state, []]

    for _ in range(args.reps):
        for entry in runs.values():
            run, state, times = entry
            t0 = time.perf_counter()
            state, metrics = run(state, args.chunk)
            jax.block_until_ready(metrics)
            times.append((time.perf_counter() - t0) / args.chunk)
            entry[1] = state

    print(
        f"{mesh.shape['tasks']} device(s), meta-batch 25, median of {args.reps} x "
        f"{args.chunk} steps"
    )
    print("| task_batching | reduction | ms / meta-step |")
    print("|---|---|---:|")
    for (batching, reduction), (_, _, times) in runs.items():
        print(f"| {batching} | {reduction} | {1e3 * sorted(times)[len(times) // 2]:.3f} |")


if __name__ == "__main__":
    main()
