"""Meta-steps on the Omniglot conv net: tasks/s per algorithm, task batching and conv.

5-way 1-shot, 15 query images per class, meta-batch 32, one inner step (alpha 0.4) unless
--inner_steps, the first device, random 28x28 images (speed does not depend on pixel
values). Measures each algorithm's meta-gradient plus the Adam update, the first
compile, and XLA's FLOP count of one task's meta-gradient (cost analysis of the vmapped
meta-gradient over the meta-batch, divided by its size; on CPU with one inner step only,
as XLA counts a loop body once and leaves cuDNN's convolutions out). Configurations run
one after another in one process, so compare rows of one run.

    python scripts/bench_omniglot_step.py [--reps=5] [--steps=5] [--batchings=vmap,loop,unroll]
        [--conv_impls=xla,im2col] [--algorithms=maml,anil] [--inner_steps=1]
        [--compute_dtypes=float32,bfloat16] [--tasks_per_vmap=0,32]

--tasks_per_vmap runs vmap's tasks in groups of that size, one group after another
(`config.tasks_per_vmap`; 0: all at once). Each row gives XLA's temporary memory of the
compiled steps (`temp MiB`), what grouping bounds.

--compute_dtypes times the network in each `config.model.compute_dtype` (parameters,
meta-gradients and Adam are float32 either way); it measures speed only (README,
"Compute dtype", has the accuracy runs).

"auto" as a batching or conv_impl is the trainer's own choice for the backend;
scripts/benchmark.py calls `measure` that way.
"""

from __future__ import annotations

import argparse
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from maml_dist import algorithms, meta_objective, models
from maml_dist.types import TaskBatch


def _xent(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_tasks(meta_batch: int, queries: int, ways: int = 5, shots: int = 1) -> TaskBatch:
    """A meta-batch of random 28x28 episodes (speed does not depend on pixel values)."""
    rng = np.random.default_rng(0)

    def images(k):
        return jnp.asarray(rng.integers(0, 256, (meta_batch, ways * k, 28, 28, 1)), jnp.uint8)

    return TaskBatch(
        support_x=images(shots),
        support_y=jnp.tile(jnp.repeat(jnp.arange(ways), shots), (meta_batch, 1)),
        query_x=images(queries),
        query_y=jnp.tile(jnp.repeat(jnp.arange(ways), queries), (meta_batch, 1)),
    )


def measure(
    name: str,
    conv_impl: str,
    batching: str,
    tasks: TaskBatch,
    steps: int,
    reps: int,
    inner_steps: int = 1,
    flops: bool = True,
    compute_dtype: str = "float32",
    inner_unroll: int = 1,
    tasks_per_vmap: int = 0,
) -> dict:
    """Times `steps` meta-steps of one configuration, as one jitted `lax.scan`.

    Args:
        name: the algorithm's registry name.
        conv_impl: "xla", "im2col" or "auto" (the trainer's choice for the backend).
        batching: "vmap", "loop", "unroll" or "auto" (likewise).
        tasks: the meta-batch every step trains on.
        steps: meta-steps per timed call.
        reps: timed calls; the median counts.
        inner_steps: inner SGD steps per task.
        flops: whether to count FLOPs where XLA's count is meaningful (see below).
        compute_dtype: the network's `compute_dtype` ("float32" or "bfloat16").
        inner_unroll: `InnerConfig.unroll`: inner loops up to this many steps unrolled.
        tasks_per_vmap: with vmap, tasks per batched group (0: all at once).

    Returns:
        conv_impl, task_batching, compute_dtype, inner_unroll and tasks_per_vmap as run,
        compile_s (lower + compile of the scanned steps), temp_bytes (XLA's temporary
        memory of that program), tasks_per_sec, steps_per_sec and gflop_per_task (None
        where not counted).
    """
    conv_impl = models.resolve_conv_impl(conv_impl)
    batching = meta_objective.resolve_batching(batching)
    n, ways = tasks.support_y.shape[0], int(tasks.support_y.max()) + 1
    tx = optax.adam(1e-3)
    model = models.ConvNet(num_classes=ways, conv_impl=conv_impl, compute_dtype=compute_dtype)

    def loss_fn(p, x, y):
        return _xent(model.apply({"params": p}, x), y)

    split = algorithms.make_head_split(model, _xent, {})
    inner = algorithms.InnerConfig(lr=0.4, steps=inner_steps, unroll=inner_unroll)
    algorithm = algorithms.make_algorithm(name, loss_fn, inner, head_split=split)
    params = algorithm.init(model.init(jax.random.key(0), tasks.support_x[0])["params"])

    def grads_of(p, tasks):
        def one(task):
            return algorithm.task_grad(p, task, 0)[0]

        if batching == "unroll":
            g = [one(jax.tree.map(lambda a, i=i: a[i], tasks)) for i in range(n)]
            return jax.tree.map(lambda *xs: sum(xs) / n, *g)
        if batching == "vmap" and 0 < tasks_per_vmap < n:
            g = jax.lax.map(one, tasks, batch_size=tasks_per_vmap)  # as meta_objective.task_terms
        else:
            g = jax.vmap(one)(tasks) if batching == "vmap" else jax.lax.map(one, tasks)
        return jax.tree.map(lambda x: x.mean(0), g)

    # The tasks are an argument, not a closed-over constant that XLA would fold.
    @jax.jit
    def run(p, opt_state, tasks):
        def body(state, _):
            p, s = state
            updates, s = tx.update(grads_of(p, tasks), s, p)
            return (optax.apply_updates(p, updates), s), None

        return jax.lax.scan(body, (p, opt_state), None, length=steps)[0]

    t0 = time.perf_counter()
    compiled = run.lower(params, tx.init(params), tasks).compile()
    compile_s = time.perf_counter() - t0
    memory = compiled.memory_analysis()
    temp_bytes = None if memory is None else memory.temp_size_in_bytes
    carry = compiled(params, tx.init(params), tasks)
    jax.block_until_ready(carry)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        carry = compiled(*carry, tasks)
        jax.block_until_ready(carry)
        times.append(time.perf_counter() - t0)
    steps_per_sec = steps / sorted(times)[len(times) // 2]
    # XLA's cost analysis counts a loop body once, whatever its trip count, so the
    # count is only the step's cost with one inner step (one scan iteration); on GPU
    # it leaves out the convolutions, which run as cuDNN custom calls (measured on an
    # H200: 0.071 GFLOP/task against 0.70 on the CPU).
    gflop = None
    if flops and inner_steps == 1 and jax.default_backend() == "cpu":
        fn = jax.jit(lambda p, t: _vmapped(algorithm, p, t))
        gflop = _flops(fn, params, tasks) / n
    return {
        "algorithm": name,
        "conv_impl": conv_impl,
        "task_batching": batching,
        "compute_dtype": compute_dtype,
        "inner_unroll": inner_unroll,
        "tasks_per_vmap": tasks_per_vmap if batching == "vmap" else 0,
        "temp_bytes": temp_bytes,
        "compile_s": compile_s,
        "steps_per_sec": steps_per_sec,
        "tasks_per_sec": n * steps_per_sec,
        "gflop_per_task": gflop,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="meta-steps per timing")
    parser.add_argument("--meta_batch", type=int, default=32)
    parser.add_argument("--batchings", default="vmap,loop,unroll")
    parser.add_argument("--conv_impls", default="xla,im2col")
    parser.add_argument("--algorithms", default="maml", help="comma-separated registry names")
    parser.add_argument("--inner_steps", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15, help="query images per class")
    parser.add_argument("--compute_dtypes", default="float32", help="float32 and/or bfloat16")
    parser.add_argument(
        "--inner_unrolls", default="1", help="InnerConfig.unroll values, comma-separated"
    )
    parser.add_argument(
        "--tasks_per_vmap", default="0", help="vmap group sizes, comma-separated (0: all)"
    )
    args = parser.parse_args()
    n = args.meta_batch
    tasks = make_tasks(n, args.queries)
    print(
        f"5-way 1-shot, {args.queries} query/class, meta-batch {n}, {args.inner_steps} inner "
        f"step(s), {len(jax.devices())} {jax.default_backend()} device(s) (the first used),"
    )
    print(f"{args.steps} meta-steps per jitted call (a lax.scan, as in the trainer)")
    print(
        "| algorithm | conv_impl | task_batching | compute_dtype | inner_unroll "
        "| tasks_per_vmap | first compile s | tasks/s | temp MiB | GFLOP/task |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    for name, conv_impl, batching, dtype, unroll, per_vmap in itertools.product(
        args.algorithms.split(","),
        args.conv_impls.split(","),
        args.batchings.split(","),
        args.compute_dtypes.split(","),
        [int(u) for u in args.inner_unrolls.split(",")],
        [int(k) for k in args.tasks_per_vmap.split(",")],
    ):
        if per_vmap and meta_objective.resolve_batching(batching) != "vmap":
            continue  # groups only split vmap's batch
        r = measure(
            name,
            conv_impl,
            batching,
            tasks,
            args.steps,
            args.reps,
            args.inner_steps,
            compute_dtype=dtype,
            inner_unroll=unroll,
            tasks_per_vmap=per_vmap,
        )
        temp = "n/a" if r["temp_bytes"] is None else f"{r['temp_bytes'] / 2**20:.0f}"
        gflop = "n/a" if r["gflop_per_task"] is None else f"{r['gflop_per_task']:.3f}"
        print(
            f"| {name} | {r['conv_impl']} | {r['task_batching']} | {dtype} | {unroll} | "
            f"{r['tasks_per_vmap']} | {r['compile_s']:.1f} | {r['tasks_per_sec']:.1f} | "
            f"{temp} | {gflop} |",
            flush=True,
        )


def _vmapped(algorithm, params, tasks):
    return jax.vmap(lambda t: algorithm.task_grad(params, t, 0)[0])(tasks)


def _flops(fn, *args) -> float:
    """XLA's FLOP estimate (GFLOP) of `fn(*args)`; NaN where the backend gives none."""
    cost = fn.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float((cost or {}).get("flops", float("nan"))) / 1e9


if __name__ == "__main__":
    main()
