"""Pure pieces of meta-testing: fixed task sets, adaptation curves, confidence intervals."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from maml_dist import algorithms, meta_objective, parallel, xla_options
from maml_dist.parallel import AXIS
from maml_dist.progress import Progress
from maml_dist.tasks.base import TaskFamily
from maml_dist.types import LossFn, TaskBatch, stream_key, task_key


def sample_tasks(
    family: TaskFamily, seed: int, stream: int, num_tasks: int, shots: int, num_query: int
) -> TaskBatch:
    """A fixed set of `num_tasks` tasks of one stream; step index 0 of that stream."""

    @functools.partial(jax.jit, compiler_options=xla_options.compiler_options())
    def sample():
        root = stream_key(seed, stream)
        keys = jax.vmap(lambda i: task_key(root, 0, i))(jnp.arange(num_tasks))
        return jax.vmap(lambda k: family.sample(k, shots, num_query))(keys)

    return sample()


def adaptation_curves(
    algorithm: algorithms.Algorithm,
    meta_params,
    tasks: TaskBatch,
    steps: int,
    metrics: tuple[LossFn, ...],
    chunk: int | None = None,
    progress: Progress | None = None,
    batching: str = meta_objective.AUTO,
) -> np.ndarray:
    """Query metrics of every task after 0..steps inner steps: (num_tasks, steps + 1, M).

    The inner steps are the algorithm's meta-test steps (`algorithm.inner_step`). The
    tasks are split over every device of the mesh `meta_params` live on (all processes
    of it), each device adapting to its own; every process gets every task's curve.
    `tasks` must be the same on every process (host arrays, or fully addressable ones).

    Tasks go through in chunks of about `chunk` (one compiled program, the last chunk
    padded), so memory stays that of a chunk whatever the number of tasks: 600 20-way
    5-shot episodes at once would need tens of GiB of conv activations. The default is
    10 tasks per device on CPU, where smaller chunks run faster (100 Omniglot 5-way 1-shot
    tasks, 10 steps, one device: 13.0 s in one chunk, 7.0 s in chunks of 10), and 100 on
    accelerators. `progress`, if given, is told of each finished chunk's tasks.

    `batching` is how a device runs its tasks, as the trainer's `task_batching`: "loop"
    (one task at a time, so a task's numbers do not depend on how many share its device:
    the same curves on any device count, bit for bit) or "vmap" (one batched program, for
    accelerators); "auto" picks "loop" on CPU and "vmap" elsewhere.
    """
    num_tasks = jax.tree.leaves(tasks)[0].shape[0]
    mesh, meta_params = _task_mesh(meta_params)
    devices = mesh.shape[AXIS]
    if chunk is None:
        chunk = default_chunk(devices)
    per_device = -(-min(chunk, num_tasks) // devices)
    chunk = per_device * devices
    sharding = NamedSharding(mesh, P(AXIS))
    host = jax.tree.map(np.asarray, tasks)
    batching = meta_objective.resolve_batching(batching)
    run = _curves_fn(algorithm, steps, metrics, mesh, "vmap" if batching == "vmap" else "loop")
    out = []
    for start in range(0, num_tasks, chunk):
        # Indices past the end repeat the last task; their rows are dropped below.
        rows = np.minimum(np.arange(start, start + chunk), num_tasks - 1)
        part = jax.tree.map(
            lambda a, r=rows: jax.make_array_from_callback(
                (chunk, *a.shape[1:]), sharding, lambda index, c=a[r]: c[index]
            ),
            host,
        )
        out.append(np.asarray(jax.device_get(run(meta_params, part))))
        if progress is not None:
            progress.update(min(chunk, num_tasks - start))
    if progress is not None:
        progress.close()
    return np.concatenate(out)[:num_tasks]


def default_chunk(num_devices: int) -> int:
    """`adaptation_curves`' tasks per chunk: 10 per device on CPU, 100 on accelerators."""
    return (10 if jax.default_backend() == "cpu" else 100) * num_devices


def _task_mesh(meta_params):
    """The mesh `meta_params` are replicated over, and them on it.

    Parameters on one device (a notebook's, not placed on a mesh) get a one-device mesh.
    """
    sharding = jax.tree.leaves(meta_params)[0].sharding
    if isinstance(sharding, NamedSharding) and AXIS in sharding.mesh.shape:
        return sharding.mesh, meta_params
    mesh = parallel.make_mesh(sorted(sharding.device_set, key=lambda d: d.id)[:1])
    return mesh, jax.device_put(meta_params, parallel.replicated(mesh))


@functools.lru_cache(maxsize=32)
def _curves_fn(algorithm, steps: int, metrics, mesh, batching: str):
    """The jitted sharded curves of one chunk: `(meta_params, tasks) -> (chunk, steps+1, M)`.

    Cached so that every chunk, and every call with the same arguments (the trainer's
    validations), reuses one compiled program.
    """

    def body(meta_params, tasks):
        # Without this, a gradient w.r.t. the replicated parameters inside shard_map comes
        # back summed over devices (README trap 1): each task would adapt on all of them.
        meta_params = jax.lax.pcast(meta_params, AXIS, to="varying")

        def curve(task):
            return algorithms.adaptation_curve(algorithm, meta_params, task, steps, metrics)

        return jax.lax.map(curve, tasks) if batching == "loop" else jax.vmap(curve)(tasks)

    sharded = jax.shard_map(body, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS))
    # Replicated output: an all-gather of the curves, so every process can read them all.
    return jax.jit(
        sharded,
        out_shardings=parallel.replicated(mesh),
        compiler_options=xla_options.compiler_options(mesh.devices.flat[0].platform),
    )


def median(values: np.ndarray) -> np.ndarray:
    """Median over axis 0: robust to the rare task an inner loop diverges on.

    A non-finite value (a diverged task, NaN included) counts as +inf, so the median stays
    finite while fewer than half of the tasks diverged.
    """
    values = np.asarray(values, np.float64)
    return np.median(np.where(np.isnan(values), np.inf, values), axis=0)


def mean_and_ci95(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over axis 0 and the normal-approximation 95% half-width 1.96 * std / sqrt(n).

    std is the sample standard deviation (ddof=1).
    """
    values = np.asarray(values, np.float64)
    n = values.shape[0]
    std = values.std(axis=0, ddof=1) if n > 1 else np.zeros(values.shape[1:])
    return values.mean(axis=0), 1.96 * std / np.sqrt(n)


@functools.partial(jax.jit, static_argnums=(0, 1, 4))
def adapted_predictions(
    model, algorithm: algorithms.Algorithm, meta_params, task: TaskBatch, steps: int, grid
):
    """Predictions on `grid` before and after `steps` inner steps on one task's support set."""
    adapted = algorithm.adapt(meta_params, task.support_x, task.support_y, steps)
    apply = algorithms.make_apply(model)
    return apply(meta_params["params"], grid, 0), apply(adapted, grid, steps)
