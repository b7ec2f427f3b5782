"""Second-order MAML step on the Omniglot conv net: tasks/s for vmap and loop task batching.

5-way 1-shot, 15 query images per class, meta-batch 32, one inner step (alpha 0.4), one
CPU device, random 28x28 images (speed does not depend on pixel values). Measures the
meta-gradient plus Adam update, and the first compile.

    python scripts/bench_omniglot_step.py [--reps=5] [--steps=5] [--batchings=vmap,loop,unroll]
        [--conv_impls=xla,im2col]
"""

from __future__ import annotations

import argparse
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from maml_dist import algorithms, models
from maml_dist.types import TaskBatch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="meta-steps per timing")
    parser.add_argument("--meta_batch", type=int, default=32)
    parser.add_argument("--batchings", default="vmap,loop,unroll")
    parser.add_argument("--conv_impls", default="xla,im2col")
    args = parser.parse_args()
    ways, shots, queries = 5, 1, 15
    rng = np.random.default_rng(0)
    n = args.meta_batch

    def images(k):
        return jnp.asarray(rng.integers(0, 256, (n, ways * k, 28, 28, 1)), jnp.uint8)

    tasks = TaskBatch(
        support_x=images(shots),
        support_y=jnp.tile(jnp.repeat(jnp.arange(ways), shots), (n, 1)),
        query_x=images(queries),
        query_y=jnp.tile(jnp.repeat(jnp.arange(ways), queries), (n, 1)),
    )
    inner = algorithms.InnerConfig(lr=0.4, steps=1)
    tx = optax.adam(1e-3)
    print(f"5-way 1-shot, 15 query, meta-batch {n}, 1 inner step, second order, 1 CPU device,")
    print(f"{args.steps} meta-steps per jitted call (a lax.scan, as in the trainer)")
    print("| conv_impl | task_batching | first compile s | tasks/s |")
    print("|---|---|---:|---:|")
    for conv_impl, batching in itertools.product(
        args.conv_impls.split(","), args.batchings.split(",")
    ):
        model = models.ConvNet(num_classes=ways, conv_impl=conv_impl)
        params = model.init(jax.random.key(0), tasks.support_x[0])["params"]

        def loss_fn(p, x, y, model=model):
            return optax.softmax_cross_entropy_with_integer_labels(
                model.apply({"params": p}, x), y
            ).mean()

        def grads_of(p, batching=batching, loss_fn=loss_fn):
            def one(task):
                return jax.grad(lambda q: algorithms.task_losses(loss_fn, q, task, inner)[0])(p)

            if batching == "unroll":
                g = [one(jax.tree.map(lambda a, i=i: a[i], tasks)) for i in range(n)]
                return jax.tree.map(lambda *xs: sum(xs) / n, *g)
            g = jax.vmap(one)(tasks) if batching == "vmap" else jax.lax.map(one, tasks)
            return jax.tree.map(lambda x: x.mean(0), g)

        @jax.jit
        def steps(p, opt_state):
            def body(state, _):
                p, s = state
                updates, s = tx.update(grads_of(p), s, p)
                return (optax.apply_updates(p, updates), s), None

            return jax.lax.scan(body, (p, opt_state), None, length=args.steps)[0]

        t0 = time.perf_counter()
        compiled = steps.lower(params, tx.init(params)).compile()
        compile_s = time.perf_counter() - t0
        carry = compiled(params, tx.init(params))
        jax.block_until_ready(carry)
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            carry = compiled(*carry)
            jax.block_until_ready(carry)
            times.append(time.perf_counter() - t0)
        rate = n * args.steps / sorted(times)[len(times) // 2]
        print(f"| {conv_impl} | {batching} | {compile_s:.1f} | {rate:.1f} |", flush=True)


if __name__ == "__main__":
    main()
