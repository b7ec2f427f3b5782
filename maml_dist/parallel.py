"""The mesh, and a meta-step laid over it: `shard_map` over the task axis, one flat `psum`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from maml_dist.meta_objective import (
    MetaBatch,
    TaskLayout,
    draw_task,
    fuses_task_sum,
    ordered_sum,
    task_terms,
    task_weights,
    weighted_rows,
    weighted_task_sum,
)
from maml_dist.types import TRAIN_STREAM, TaskBatch, stream_key

AXIS = "tasks"


def make_mesh(devices: list | None = None) -> jax.sharding.Mesh:
    """One-axis mesh named `tasks` over `devices` (default: every device of every host)."""
    devices = jax.devices() if devices is None else devices
    return jax.make_mesh(
        (len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Explicit,), devices=devices
    )


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def put_replicated(tree, mesh: jax.sharding.Mesh):
    """A pytree of host (numpy) arrays as global arrays with a full copy on every device.

    Every process passes the same values (each reads the data itself); each places only
    its own devices' copies, so this works on one host or many.
    """
    sharding = replicated(mesh)
    return jax.tree.map(
        lambda a: jax.make_array_from_callback(a.shape, sharding, lambda index: a[index]), tree
    )


def _device_tasks(layout: TaskLayout) -> tuple[jax.Array, jax.Array]:
    """Inside `shard_map`: this device's first global task index, and all of its indices."""
    first = jax.lax.axis_index(AXIS) * layout.per_device
    return first, first + jnp.arange(layout.per_device)


def make_meta_grad_fn(spec: MetaBatch, mesh: jax.sharding.Mesh) -> Callable:
    """Returns `(meta_params, step[, tasks][, measure][, data]) -> (grads, metrics)` over `mesh`.

    `tasks` is the host-sampled meta-batch (sharded over the task axis) when
    `spec.sample_fn` is None; `measure` and `data` (replicated) are as in `task_terms`.

    Each device samples and adapts to its own slice of the global meta-batch; gradients and
    losses travel in one flat buffer, so each step makes a single collective (README trap 7).
    """
    layout = TaskLayout(spec.meta_batch_size, mesh.shape[AXIS])

    def body(meta_params, step, measure, data, tasks=None):
        # Without this, jax.grad w.r.t. replicated params inside shard_map returns the
        # gradient summed over devices (README trap 1), silently mixing other devices' tasks
        # into each device's inner adaptation.
        meta_params = jax.lax.pcast(meta_params, AXIS, to="varying")
        first, indices = _device_tasks(layout)
        if fuses_task_sum(spec, layout):
            sums = weighted_task_sum(spec, meta_params, step, indices, tasks, measure, data)
            flat, unravel = ravel_pytree(sums)  # one collective for everything (README trap 7)
            return unravel(jax.lax.psum(flat, AXIS))
        terms = task_terms(spec, meta_params, step, indices, tasks, measure, data)
        rows, unravel = weighted_rows(terms, task_weights(indices, spec.meta_batch_size))
        if spec.reduction == "ordered":
            # Place this device's rows at their global positions; the psum then adds only
            # zeros to them, so it is an exact gather, and every device sums the same rows
            # in the same order whatever the device count.
            everyone = jnp.zeros((layout.padded_size, rows.shape[1]), rows.dtype)
            everyone = jax.lax.dynamic_update_slice(everyone, rows, (first, 0))
            total = ordered_sum(jax.lax.psum(everyone, AXIS)[: spec.meta_batch_size])
        elif spec.fuse_collectives:
            total = jax.lax.psum(jnp.sum(rows, axis=0), AXIS)
        else:
            return jax.tree.map(lambda x: jax.lax.psum(x, AXIS), unravel(jnp.sum(rows, axis=0)))
        return unravel(total)

    # Tasks handed in (sampled by the host, or ahead by `make_chunk_sampler`) arrive split
    # over the devices; otherwise each device samples its own inside `task_terms`.
    given = jax.shard_map(
        body, mesh=mesh, in_specs=(P(), P(), P(), P(), P(AXIS)), out_specs=(P(), P())
    )
    own = jax.shard_map(body, mesh=mesh, in_specs=(P(), P(), P(), P()), out_specs=(P(), P()))

    def meta_grad_fn(meta_params, step, tasks=None, measure=True, data=None):
        if tasks is not None:
            return given(meta_params, step, jnp.asarray(measure), data, tasks)
        if spec.sample_fn is None:
            raise ValueError("this meta-batch is sampled on the host: pass its tasks")
        return own(meta_params, step, jnp.asarray(measure), data)

    return meta_grad_fn


# A chunk's tasks are sampled ahead in one batched program when the whole meta-batch's
# take at most this much memory (sinusoids: 2 MiB for 500 steps of 25 tasks); image episodes,
# hundreds of KB a task, are drawn inside each step instead.
PRESAMPLE_MAX_BYTES = 32 * 2**20


def make_chunk_sampler(spec: MetaBatch, mesh: jax.sharding.Mesh) -> Callable:
    """Returns `(steps, data) -> tasks`: every task of the meta-steps `steps`, sampled at once.

    The tasks are those `task_terms` would draw inside each step (same keys: the seed's
    training stream, the step, the global task index), stacked `(len(steps), padded
    meta-batch, ...)` and split over the devices on axis 1, each device drawing its own.
    Sampling a whole chunk in one batched program costs a fraction of sampling inside every
    step, where each of the sampler's small PRNG kernels runs once per step (docs/benchmarks.md,
    "The trainer against a hand-written loop").
    """
    layout = TaskLayout(spec.meta_batch_size, mesh.shape[AXIS])

    def body(steps, data):
        # The root key inside the program: outside, its PRNG calls would run one by one,
        # each compiled on its own (0.15 s of start-up).
        root = stream_key(spec.seed, TRAIN_STREAM)
        _, indices = _device_tasks(layout)

        def one(step, index):
            return draw_task(spec, root, step, index, None, data)

        return jax.vmap(lambda s: jax.vmap(lambda i: one(s, i))(indices))(steps)

    return jax.shard_map(body, mesh=mesh, in_specs=(P(), P()), out_specs=P(None, AXIS))


def chunk_task_bytes(spec: MetaBatch, num_steps: int, num_devices: int = 1, data=None) -> int:
    """Bytes per device of `num_steps` steps' tasks sampled ahead (`make_chunk_sampler`).

    With the default one device: the whole meta-batch's, the same for any device count.
    """
    shapes = jax.eval_shape(lambda key: spec.sample_fn(key, data), jax.random.key(0))
    per_task = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(shapes))
    return per_task * num_steps * TaskLayout(spec.meta_batch_size, num_devices).per_device


def reference_meta_grads(
    spec: MetaBatch, meta_params, step, tasks: TaskBatch | None = None, data=None
):
    """Unsharded reference: the same `task_terms` under one `vmap` over the whole meta-batch.

    The sharded path adds the `pcast` guard, the split over devices and the collectives;
    comparing the two checks exactly those. `tasks` are the host-sampled tasks (leading
    axis = meta-batch, padding allowed) when `spec.sample_fn` is None.
    """
    size = spec.meta_batch_size if tasks is None else tasks.support_x.shape[0]
    indices = jnp.arange(size)
    vmapped = dataclasses.replace(spec, batching="vmap", tasks_per_vmap=0)
    terms = task_terms(vmapped, meta_params, step, indices, tasks, data=data)
    rows, unravel = weighted_rows(terms, task_weights(indices, spec.meta_batch_size))
    return unravel(jnp.sum(rows, axis=0))
