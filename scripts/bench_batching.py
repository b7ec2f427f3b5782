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

import timing

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
    from maml_dist import meta_objective, meta_update, parallel
    from maml_dist import state as state_lib
    from maml_dist.problem import make_problem

    mesh = parallel.make_mesh()
    runs = {}
    for batching, reduction in itertools.product(
        meta_objective.BATCHINGS, meta_objective.REDUCTIONS
    ):
        config = sinusoid.get_config()
        config.update({"task_batching": batching, "reduction": reduction})
        problem = make_problem(config)
        tx, _ = state_lib.make_meta_optimizer(config)
        spec = meta_objective.meta_batch_spec(config, problem)
        run = meta_update.make_multi_step(
            meta_update.make_train_step(parallel.make_meta_grad_fn(spec, mesh), tx)
        )
        state = state_lib.init_state(
            problem.model,
            problem.family.example_input(),
            tx,
            0,
            problem.algorithm,
            parallel.replicated(mesh),
        )
        runs[(batching, reduction)] = (run, timing.warm(run, state, args.chunk))
    med = timing.interleaved_ms_per_step(runs, args.chunk, args.reps)

    print(
        f"{mesh.shape['tasks']} device(s), meta-batch 25, median of {args.reps} x "
        f"{args.chunk} steps"
    )
    print("| task_batching | reduction | ms / meta-step |")
    print("|---|---|---:|")
    for (batching, reduction), ms in med.items():
        print(f"| {batching} | {reduction} | {ms:.3f} |")


if __name__ == "__main__":
    main()
