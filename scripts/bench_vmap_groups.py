"""Memory of the trainer's meta-gradient against `config.tasks_per_vmap` (compiles only).

The Omniglot conv net, 5-way 1-shot, 15 query images per class, one inner step, second
order, XLA convolutions, tasks vmapped on one device and handed in (as the host feed
does): for each group size, XLA's temporary memory (`memory_analysis`) and compile time of
`parallel.make_meta_grad_fn`, the program the trainer runs, for MAML (whose meta-batch
loss is differentiated once per group) and Meta-SGD (a gradient per task). Nothing is
run, so any meta-batch fits in a few seconds of CPU per program.

    python scripts/bench_vmap_groups.py [--meta_batch=32] [--tasks_per_vmap=0,16,8,4,1]
        [--algorithms=maml,metasgd]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import bench_omniglot_step

from maml_dist import algorithms, meta_objective, models, parallel


def measure(name: str, meta_batch: int, tasks_per_vmap: int) -> dict:
    """Compiles the sharded meta-gradient on the first device; returns its memory and time."""
    tasks = bench_omniglot_step.make_tasks(meta_batch, queries=15)
    model = models.ConvNet(num_classes=5, conv_impl="xla")
    loss_fn = algorithms.make_loss_fn(model, bench_omniglot_step._xent)
    query_fn = algorithms.make_query_fn(model, bench_omniglot_step._xent, {})
    inner = algorithms.InnerConfig(lr=0.4, steps=1)
    split = algorithms.make_head_split(model, bench_omniglot_step._xent, {})
    algorithm = algorithms.make_algorithm(name, loss_fn, inner, query_fn, split)
    params = model.init(jax.random.key(0), tasks.support_x[0])["params"]
    spec = meta_objective.MetaBatch(
        algorithm=algorithm,
        query_fn=query_fn,
        sample_fn=None,
        meta_batch_size=meta_batch,
        seed=0,
        batching="vmap",
        tasks_per_vmap=tasks_per_vmap,
    )
    mesh = parallel.make_mesh(jax.devices()[:1])
    rep = parallel.replicated(mesh)
    args = (
        jax.device_put(algorithm.init(params), rep),
        jax.device_put(jnp.int32(0), rep),
        jax.device_put(
            tasks, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("tasks"))
        ),
    )
    t0 = time.perf_counter()
    compiled = jax.jit(parallel.make_meta_grad_fn(spec, mesh)).lower(*args).compile()
    return {
        "algorithm": name,
        "tasks_per_vmap": tasks_per_vmap,
        "fused": meta_objective.fuses_task_sum(spec, meta_objective.TaskLayout(meta_batch, 1)),
        "temp_bytes": compiled.memory_analysis().temp_size_in_bytes,
        "compile_s": time.perf_counter() - t0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta_batch", type=int, default=32)
    parser.add_argument("--tasks_per_vmap", default="0,16,8,4,1")
    parser.add_argument("--algorithms", default="maml,metasgd")
    args = parser.parse_args()
    print(
        f"Omniglot 5-way 1-shot, 15 query/class, meta-batch {args.meta_batch}, 1 inner step, "
        f"vmap + XLA conv, 1 {jax.default_backend()} device, jax {jax.__version__}"
    )
    print("| algorithm | tasks_per_vmap | one gradient a group | temp MiB | compile s |")
    print("|---|---:|---|---:|---:|")
    for name in args.algorithms.split(","):
        for size in (int(k) for k in args.tasks_per_vmap.split(",")):
            r = measure(name, args.meta_batch, size)
            print(
                f"| {name} | {size} | {'yes' if r['fused'] else 'no'} | "
                f"{r['temp_bytes'] / 2**20:.0f} | {r['compile_s']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
