"""Mesh, meta-batch layout and the sharded train step (`shard_map` + one fused `psum`)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from maml_dist import algorithms
from maml_dist.state import TrainState
from maml_dist.tasks.base import TRAIN_STREAM, TaskBatch, stream_key, task_key

AXIS = "tasks"

SampleFn = Callable[[jax.Array], TaskBatch]


def make_mesh(devices: list | None = None) -> jax.sharding.Mesh:
    """One-axis mesh named `tasks` over `devices` (default: every device of every host)."""
    devices = jax.devices() if devices is None else devices
    return jax.make_mesh(
        (len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Explicit,), devices=devices
    )


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


@dataclasses.dataclass(frozen=True)
class TaskLayout:
    """How a meta-batch of `meta_batch_size` tasks is laid over `num_devices` devices.

    When padding is on and the size does not divide, the meta-batch is padded up to the
    next multiple; padded tasks are sampled but get weight 0, so the objective is exactly
    the mean over the real tasks.
    """

    meta_batch_size: int
    num_devices: int

    @property
    def per_device(self) -> int:
        """Tasks (real or padding) each device adapts to."""
        return -(-self.meta_batch_size // self.num_devices)

    @property
    def padded_size(self) -> int:
        """Tasks computed per meta-step, padding included."""
        return self.per_device * self.num_devices


def task_weights(indices: jax.Array, meta_batch_size: int) -> jax.Array:
    """1/meta_batch_size for real tasks, 0 for padding (global index >= meta_batch_size)."""
    return jnp.where(indices < meta_batch_size, 1.0 / meta_batch_size, 0.0)


def local_meta_grads(
    loss_fn: algorithms.LossFn,
    sample_fn: SampleFn,
    inner: algorithms.InnerConfig,
    meta_batch_size: int,
    seed: int,
    params,
    step: jax.Array,
    indices: jax.Array,
):
    """Meta-gradient contribution of the tasks with global indices `indices` at `step`.

    Returns:
        (grads, metrics): sums weighted by 1/meta_batch_size, to be summed over devices.
    """
    root = stream_key(seed, TRAIN_STREAM)
    tasks = jax.vmap(lambda i: sample_fn(task_key(root, step, i)))(indices)
    weights = task_weights(indices, meta_batch_size)
    (loss, aux), grads = jax.value_and_grad(algorithms.meta_objective, argnums=1, has_aux=True)(
        loss_fn, params, tasks, weights, inner
    )
    return grads, {"meta_loss": loss, **aux}


def fused_psum(tree, axis_name: str):
    """`psum` of a whole pytree as one flat buffer: one collective instead of one per leaf."""
    flat, unravel = ravel_pytree(tree)
    return unravel(jax.lax.psum(flat, axis_name))


def make_meta_grad_fn(
    loss_fn: algorithms.LossFn,
    sample_fn: SampleFn,
    inner: algorithms.InnerConfig,
    meta_batch_size: int,
    seed: int,
    mesh: jax.sharding.Mesh,
) -> Callable:
    """Returns `(params, step) -> (grads, metrics)`, the meta-batch split over `mesh`.

    Each device samples and adapts to its own slice of the global meta-batch; the weighted
    gradient sums are combined with one fused `psum`.
    """
    layout = TaskLayout(meta_batch_size, mesh.shape[AXIS])

    def body(params, step):
        # Without this, jax.grad w.r.t. replicated params inside shard_map returns the
        # gradient summed over devices (DESIGN.md §4), silently mixing other devices' tasks
        # into each device's inner adaptation.
        params = jax.lax.pcast(params, AXIS, to="varying")
        first = jax.lax.axis_index(AXIS) * layout.per_device
        indices = first + jnp.arange(layout.per_device)
        grads, metrics = local_meta_grads(
            loss_fn, sample_fn, inner, meta_batch_size, seed, params, step, indices
        )
        return fused_psum((grads, metrics), AXIS)

    return jax.shard_map(body, mesh=mesh, in_specs=(P(), P()), out_specs=(P(), P()))


def reference_meta_grads(
    loss_fn: algorithms.LossFn,
    sample_fn: SampleFn,
    inner: algorithms.InnerConfig,
    meta_batch_size: int,
    seed: int,
    params,
    step,
):
    """Unsharded reference: the whole meta-batch on one device with `vmap`."""
    indices = jnp.arange(meta_batch_size)
    return local_meta_grads(loss_fn, sample_fn, inner, meta_batch_size, seed, params, step, indices)


def make_train_step(meta_grad_fn: Callable, tx: optax.GradientTransformation) -> Callable:
    """Returns the pure `state -> (state, metrics)` meta-update."""

    def train_step(state: TrainState):
        grads, metrics = meta_grad_fn(state.params, state.step)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_multi_step(train_step: Callable) -> Callable:
    """Returns jitted `(state, n) -> (state, metrics stacked over n steps)`.

    Running n steps in one executable (a `lax.scan`) removes n - 1 dispatches and keeps
    only one executable in flight per chunk (DESIGN.md §5.2). The state is donated.
    """

    @functools.partial(jax.jit, static_argnums=1, donate_argnums=0)
    def run(state, n: int):
        return jax.lax.scan(lambda s, _: train_step(s), state, None, length=n)

    return run


def make_config_meta_grad_fn(
    config: ml_collections.ConfigDict, loss_fn, sample_fn, mesh
) -> Callable:
    """`make_meta_grad_fn` with the settings read from a config."""
    return make_meta_grad_fn(
        loss_fn, sample_fn, inner_config(config), config.meta_batch_size, config.seed, mesh
    )


def inner_config(config: ml_collections.ConfigDict) -> algorithms.InnerConfig:
    """The inner-loop settings of a config."""
    return algorithms.InnerConfig(
        lr=config.inner_lr,
        steps=config.inner_steps,
        first_order=config.first_order,
        remat=config.remat_inner,
    )
