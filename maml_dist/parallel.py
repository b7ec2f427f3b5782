"""Mesh, meta-batch layout and the sharded train step (`shard_map` + one flat `psum`)."""

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
from maml_dist.types import TRAIN_STREAM, TaskBatch, stream_key, task_key

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


BATCHINGS = ("vmap", "loop", "unroll")
REDUCTIONS = ("sum", "ordered")
AUTO = "auto"


def resolve_batching(name: str, backend: str | None = None) -> str:
    """The task batching to use: `name`, or for "auto" the backend's best one.

    "auto" is "loop" on CPU, where vmap over per-task conv weights becomes a grouped
    convolution (DESIGN.md §5.8; loop measured 26.8 against 21.3 tasks/s on the Omniglot
    step with im2col convs), and "vmap" on accelerators.
    """
    if name != AUTO:
        return name
    return "loop" if (backend or jax.default_backend()) == "cpu" else "vmap"


@dataclasses.dataclass(frozen=True)
class MetaBatch:
    """What one meta-step computes, independent of how it is laid over devices.

    Attributes:
        loss_fn: per-task loss `loss_fn(params, x, y)`.
        sample_fn: task sampler `key -> TaskBatch` (one task).
        inner: inner-loop settings.
        meta_batch_size: real tasks per meta-step (padding excluded).
        seed: the run's seed; tasks come from its training stream.
        batching: how a device runs its tasks: "vmap" (one batched program), "loop"
            (`lax.map`, one task at a time) or "unroll" (one task at a time, unrolled at
            trace time). XLA:CPU runs batched per-task conv weights as slow grouped
            convolutions (DESIGN.md §5.8), and convolutions inside a loop body ~9x slower
            than the same code unrolled (measured, scripts/bench_omniglot_step.py), so
            conv nets on CPU want "unroll" (longer compiles). "loop" and "unroll" make each
            task's numbers independent of how many tasks share a device.
        reduction: "sum" adds each device's tasks, then the devices (one psum of a
            parameter-sized buffer); "ordered" gathers every task's terms and adds them in
            global task order on every device (a meta_batch x parameters psum), which with
            "loop" makes results bit-identical for any device or process count.
    """

    loss_fn: algorithms.LossFn
    sample_fn: SampleFn
    inner: algorithms.InnerConfig
    meta_batch_size: int
    seed: int
    batching: str = "vmap"
    reduction: str = "sum"
    # False: one psum per parameter leaf, only to measure what fusing saves (benchmarks).
    fuse_collectives: bool = True
    # `(params, x, y) -> (loss, metric)` from one forward pass, for families with a reported
    # metric besides the loss (classification accuracy); it replaces `loss_fn` on the query.
    loss_and_score_fn: Callable | None = None
    score_name: str = "score"

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Names of the per-task values that follow the gradient in `task_terms` rows."""
        names = ("meta_loss", "loss_before")
        if self.loss_and_score_fn is not None:
            names += (f"{self.score_name}_after", f"{self.score_name}_before")
        return names


def task_terms(
    spec: MetaBatch,
    params,
    step: jax.Array,
    indices: jax.Array,
    tasks: TaskBatch | None = None,
    measure: bool | jax.Array = True,
) -> jax.Array:
    """Per-task meta-gradient and losses of the tasks `indices` (global) of meta-step `step`.

    Args:
        spec: what a meta-step computes.
        params: meta-parameters.
        step: the meta-step (selects the sampled tasks).
        indices: global task indices.
        tasks: the tasks themselves, one per index, when the host samples them
            (`spec.sample_fn` is None); otherwise sampled here on the device.
        measure: whether to score the query set before adaptation too (one more forward
            pass per task); if False, those columns are NaN. The trainer measures only the
            last step of each chunk, the one it reports.

    Returns:
        (len(indices), num_params + len(spec.metric_names)): each row is [flat
        meta-gradient, loss after adaptation, loss before, (score after, score before)],
        unweighted.
    """
    root = stream_key(spec.seed, TRAIN_STREAM)

    def one(index_and_task):
        index, task = index_and_task
        if task is None:
            task = spec.sample_fn(task_key(root, step, index))

        def query(p):
            if spec.loss_and_score_fn is None:
                return spec.loss_fn(p, task.query_x, task.query_y), ()
            loss, score = spec.loss_and_score_fn(p, task.query_x, task.query_y)
            return loss, (score,)

        def objective(p):
            adapted = algorithms.adapt(spec.loss_fn, p, task.support_x, task.support_y, spec.inner)
            return query(adapted)

        (after, score_after), grads = jax.value_and_grad(objective, has_aux=True)(params)

        def before():
            loss, score = query(params)
            return (loss, *score)

        if isinstance(measure, bool) and measure:
            before_values = before()
        else:
            # An unbatched predicate keeps this a real branch under vmap and lax.map.
            # NaNs shaped (and device-varying) like `after`, as cond's branches must match.
            nans = tuple(jnp.full_like(after, jnp.nan) for _ in range(1 + len(score_after)))
            before_values = jax.lax.cond(measure, before, lambda: nans)
        loss_before, *score_before = before_values
        values = [after, loss_before, *score_after, *score_before]
        return jnp.concatenate([ravel_pytree(grads)[0], jnp.stack(values)])

    xs = (indices, tasks)
    if spec.batching == "loop":
        return jax.lax.map(one, xs)
    if spec.batching == "unroll":
        return jnp.stack(
            [one(jax.tree.map(lambda a, j=j: a[j], xs)) for j in range(indices.shape[0])]
        )
    return jax.vmap(one)(xs)


def ordered_sum(rows: jax.Array) -> jax.Array:
    """Sum over axis 0 strictly in row order (a scan), so no compiler choice changes it.

    `jnp.sum` leaves the association to XLA, which may pick another reduction tree when the
    surrounding program (device count, fusion) changes.
    """
    total, _ = jax.lax.scan(lambda acc, row: (acc + row, None), jnp.zeros_like(rows[0]), rows)
    return total


def _unpack(spec: MetaBatch, params, total: jax.Array):
    """Splits a reduced [gradient, metrics...] row back into (grads, metrics)."""
    unravel = ravel_pytree(params)[1]
    names = spec.metric_names
    n = total.shape[0] - len(names)
    return unravel(total[:n]), {name: total[n + i] for i, name in enumerate(names)}


def make_meta_grad_fn(spec: MetaBatch, mesh: jax.sharding.Mesh) -> Callable:
    """Returns `(params, step[, tasks][, measure]) -> (grads, metrics)`, split over `mesh`.

    `tasks` is the host-sampled meta-batch (sharded over the task axis) when
    `spec.sample_fn` is None; `measure` is as in `task_terms`.

    Each device samples and adapts to its own slice of the global meta-batch; gradients and
    losses travel in one flat buffer, so each step makes a single collective (DESIGN.md §5.7).
    """
    layout = TaskLayout(spec.meta_batch_size, mesh.shape[AXIS])

    def body(params, step, measure, tasks=None):
        # Without this, jax.grad w.r.t. replicated params inside shard_map returns the
        # gradient summed over devices (DESIGN.md §4), silently mixing other devices' tasks
        # into each device's inner adaptation.
        params = jax.lax.pcast(params, AXIS, to="varying")
        first = jax.lax.axis_index(AXIS) * layout.per_device
        indices = first + jnp.arange(layout.per_device)
        terms = task_weights(indices, spec.meta_batch_size)[:, None] * task_terms(
            spec, params, step, indices, tasks, measure
        )
        if spec.reduction == "ordered":
            # Place this device's rows at their global positions; the psum then adds only
            # zeros to them, so it is an exact gather, and every device sums the same rows
            # in the same order whatever the device count.
            rows = jnp.zeros((layout.padded_size, terms.shape[1]), terms.dtype)
            rows = jax.lax.dynamic_update_slice(rows, terms, (first, 0))
            total = ordered_sum(jax.lax.psum(rows, AXIS)[: spec.meta_batch_size])
        elif spec.fuse_collectives:
            total = jax.lax.psum(jnp.sum(terms, axis=0), AXIS)
        else:
            grads_and_metrics = _unpack(spec, params, jnp.sum(terms, axis=0))
            return jax.tree.map(lambda x: jax.lax.psum(x, AXIS), grads_and_metrics)
        return _unpack(spec, params, total)

    host = spec.sample_fn is None  # tasks come from the host, split over the devices
    in_specs = (P(), P(), P(), P(AXIS)) if host else (P(), P(), P())
    sharded = jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=(P(), P()))

    def meta_grad_fn(params, step, tasks=None, measure=True):
        extra = (tasks,) if host else ()
        return sharded(params, step, jnp.asarray(measure), *extra)

    return meta_grad_fn


def reference_meta_grads(spec: MetaBatch, params, step, tasks: TaskBatch | None = None):
    """Unsharded reference: `jax.grad` of the meta-objective over the whole meta-batch.

    Written from `algorithms.meta_objective` directly (not from `task_terms`), so the
    sharded path is checked against an independent formulation. `tasks` are the
    host-sampled tasks (leading axis = meta-batch, padding allowed) when
    `spec.sample_fn` is None.
    """
    root = stream_key(spec.seed, TRAIN_STREAM)
    if tasks is None:
        indices = jnp.arange(spec.meta_batch_size)
        tasks = jax.vmap(lambda i: spec.sample_fn(task_key(root, step, i)))(indices)
    else:
        indices = jnp.arange(tasks.support_x.shape[0])
    weights = task_weights(indices, spec.meta_batch_size)
    (loss, aux), grads = jax.value_and_grad(algorithms.meta_objective, argnums=1, has_aux=True)(
        spec.loss_fn, params, tasks, weights, spec.inner
    )
    return grads, {"meta_loss": loss, **aux}


def make_train_step(meta_grad_fn: Callable, tx: optax.GradientTransformation) -> Callable:
    """Returns the pure `(state[, tasks]) -> (state, metrics)` meta-update.

    `tasks` (the meta-batch, sharded over the task axis) is passed when the host samples
    them; device-sampled families take none. `measure` is as in `task_terms`.
    """

    def train_step(state: TrainState, tasks: TaskBatch | None = None, measure=True):
        grads, metrics = meta_grad_fn(state.params, state.step, tasks, measure)
        # Keeps XLA from fusing the update into the gradient computation: fusion (and so
        # FMA contraction) there depends on the device count, and would break the
        # bit-identity that task_batching="loop" + reduction="ordered" promise.
        grads = jax.lax.optimization_barrier(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_multi_step_over(train_step: Callable) -> Callable:
    """Returns jitted `(state, batches) -> (state, metrics)` over host-sampled batches.

    `batches` stacks one meta-batch per step on a leading axis (sharded
    `P(None, "tasks")`); the steps run as one `lax.scan`, like `make_multi_step`, and
    likewise only the last step's pre-adaptation metrics are measured.
    """

    @functools.partial(jax.jit, donate_argnums=0)
    def run(state, batches):
        n = jax.tree.leaves(batches)[0].shape[0]
        return jax.lax.scan(lambda s, xs: train_step(s, *xs), state, (batches, _last_only(n)))

    return run


def make_multi_step(train_step: Callable) -> Callable:
    """Returns jitted `(state, n) -> (state, metrics stacked over n steps)`.

    Running n steps in one executable (a `lax.scan`) removes n - 1 dispatches and keeps
    only one executable in flight per chunk (DESIGN.md §5.2). The state is donated. The
    metrics of every step but the last hold NaN before-adaptation values (`_last_only`).
    """

    @functools.partial(jax.jit, static_argnums=1, donate_argnums=0)
    def run(state, n: int):
        return jax.lax.scan(lambda s, m: train_step(s, None, m), state, _last_only(n))

    return run


def _last_only(n: int) -> jax.Array:
    """Per-step `measure` flags of a chunk of n steps: only the last one, the one reported.

    Scoring the query set before adaptation is a forward pass per task that no gradient
    needs (measured: ~25% of an Omniglot 5-way 1-shot step with 15 queries per class).
    """
    return jnp.arange(n) == n - 1


def meta_batch_spec(config: ml_collections.ConfigDict, problem) -> MetaBatch:
    """The MetaBatch a config describes, for its `problem.Problem`."""
    return MetaBatch(
        loss_fn=problem.loss_fn,
        sample_fn=problem.sample_fn,
        inner=inner_config(config),
        meta_batch_size=config.meta_batch_size,
        seed=config.seed,
        batching=resolve_batching(config.task_batching),
        reduction=config.reduction,
        loss_and_score_fn=None if problem.score_is_loss else problem.loss_and_score_fn,
        score_name=problem.family.metric,
    )


def inner_config(config: ml_collections.ConfigDict) -> algorithms.InnerConfig:
    """The inner-loop settings of a config."""
    return algorithms.InnerConfig(
        lr=config.inner_lr,
        steps=config.inner_steps,
        first_order=config.first_order,
        remat=config.remat_inner,
    )
