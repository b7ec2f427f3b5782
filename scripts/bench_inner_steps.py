"""Time and memory of one meta-step against the number of inner steps, per algorithm.

The sinusoid paper setting (meta-batch 25, K=10, one CPU device) with k inner steps for
MAML (second order), MAML with `remat_inner`, first-order MAML and iMAML (or any other
registered algorithm). Each configuration runs in its own process so that peak RSS is its
own. Prints a markdown table and writes a JSON list of records with `algorithm`,
`inner_steps`, `ms_per_step`, `temp_mib` (XLA's temporary buffers of the jitted step),
`compile_s` and `peak_rss_mib`.

    python scripts/bench_inner_steps.py [--algorithms=maml,maml_remat,fomaml,imaml]
        [--steps=1,5,10,25,50,100] [--reps=5] [--json=scripts/results/bench_inner_steps.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Names besides the registry's: an algorithm with config overrides.
VARIANTS = {"maml_remat": ("maml", {"remat_inner": True})}


def measure(name: str, inner_steps: int, reps: int, chunk: int) -> dict:
    """Runs in a child process: compile stats, then the median time of `chunk` steps."""
    import jax  # imported in the child only

    sys.path.insert(0, str(ROOT))
    from configs import sinusoid
    from maml_dist import meta_objective, meta_update, parallel
    from maml_dist import state as state_lib
    from maml_dist.problem import make_problem

    algorithm, overrides = VARIANTS.get(name, (name, {}))
    config = sinusoid.get_config()
    config.update({"algorithm": algorithm, "inner_steps": inner_steps, **overrides})
    problem = make_problem(config)
    mesh = parallel.make_mesh(jax.devices()[:1])
    tx, _ = state_lib.make_meta_optimizer(config)
    state = state_lib.init_state(
        problem.model,
        problem.family.example_input(),
        tx,
        0,
        problem.algorithm,
        parallel.replicated(mesh),
    )
    step = meta_update.make_train_step(
        parallel.make_meta_grad_fn(meta_objective.meta_batch_spec(config, problem), mesh), tx
    )
    t0 = time.perf_counter()
    compiled = jax.jit(step).lower(state).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()

    run = meta_update.make_multi_step(step)
    state, _ = run(state, chunk)  # compile the chunked loop and warm up
    jax.block_until_ready(state)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        state, metrics = run(state, chunk)
        jax.block_until_ready(metrics)
        times.append((time.perf_counter() - t0) / chunk)
    times.sort()
    return {
        "algorithm": name,
        "inner_steps": inner_steps,
        "ms_per_step": 1e3 * times[len(times) // 2],
        "compile_s": compile_s,
        "temp_mib": mem.temp_size_in_bytes / 2**20,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", default="maml,maml_remat,fomaml,imaml")
    parser.add_argument("--steps", default="1,5,10,25,50,100")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=100, help="meta-steps per timing")
    parser.add_argument(
        "--json", default=str(ROOT / "scripts" / "results" / "bench_inner_steps.json")
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # "algorithm|inner_steps": child mode
    args = parser.parse_args()
    if args.one:
        name, k = args.one.split("|")
        print(json.dumps(measure(name, int(k), args.reps, args.chunk)))
        return

    rows = []
    names = args.algorithms.split(",")
    for k in (int(s) for s in args.steps.split(",")):
        for name in names:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    f"--one={name}|{k}",
                    f"--reps={args.reps}",
                    f"--chunk={args.chunk}",
                ],
                capture_output=True,
                text=True,
                check=True,
                env=os.environ,  # the caller's backend (JAX_PLATFORMS), CPU or accelerator
            ).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr)
            # After every row, so a time limit leaves the rows measured so far.
            pathlib.Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    print("| inner steps | algorithm | ms / meta-step | XLA temp MiB | peak RSS MiB | compile s |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['inner_steps']} | {r['algorithm']} | {r['ms_per_step']:.3f} | "
            f"{r['temp_mib']:.2f} | {r['peak_rss_mib']:.0f} | {r['compile_s']:.2f} |"
        )


if __name__ == "__main__":
    main()
