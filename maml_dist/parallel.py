"""Mesh, meta-batch layout and the sharded train step (`shard_map` + one flat `psum`)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from maml_dist import nonfinite, xla_options
from maml_dist import state as state_lib
from maml_dist.algorithms import Algorithm
from maml_dist.state import TrainState
from maml_dist.types import RATES, TRAIN_STREAM, QueryFn, TaskBatch, stream_key, task_key

AXIS = "tasks"

SampleFn = Callable[[jax.Array, Any], TaskBatch]
"""`sample_fn(key, data) -> TaskBatch`: one task from its key and the device-resident data
(an `EpisodeTables` pytree for image episodes drawn on the device; None for families that
need no data, such as the sinusoids)."""


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
    convolution (README trap 8; loop measured 26.8 against 21.3 tasks/s on the Omniglot
    step with im2col convs), and "vmap" on accelerators.
    """
    if name != AUTO:
        return name
    return "loop" if (backend or jax.default_backend()) == "cpu" else "vmap"


@dataclasses.dataclass(frozen=True)
class MetaBatch:
    """What one meta-step computes, independent of how it is laid over devices.

    Attributes:
        algorithm: the meta-learning algorithm; this module only maps its `task_grad`
            over tasks and reduces what it returns.
        query_fn: `(params, x, y) -> (loss, metrics)`, scored on the query set before
            adaptation (the "before" columns of the logs).
        sample_fn: task sampler `(key, data) -> TaskBatch` (one task, `SampleFn`); None
            when the host samples.
        meta_batch_size: real tasks per meta-step (padding excluded).
        seed: the run's seed; tasks come from its training stream.
        batching: how a device runs its tasks: "vmap" (one batched program), "loop"
            (`lax.map`, one task at a time) or "unroll" (one task at a time, unrolled at
            trace time). XLA:CPU runs batched per-task conv weights as slow grouped
            convolutions (README trap 8), and convolutions inside a loop body ~9x slower
            than the same code unrolled (measured, scripts/bench_omniglot_step.py), so
            conv nets on CPU want "unroll" (longer compiles). "loop" and "unroll" make each
            task's numbers independent of how many tasks share a device.
        reduction: "sum" adds each device's tasks, then the devices (one psum of a
            parameter-sized buffer); "ordered" gathers every task's terms and adds them in
            global task order on every device (a meta_batch x parameters psum), which with
            "loop" makes results bit-identical for any device or process count.
        fuse_collectives: False: one psum per leaf, only to measure what fusing saves.
        tasks_per_vmap: with "vmap", how many of a device's tasks one batched program
            adapts to at a time (`lax.map` over groups of this size); 0, or at least the
            device's task count, for all at once. Memory then grows with the group, not
            with the meta-batch, and XLA compiles the group's shapes.
    """

    algorithm: Algorithm
    query_fn: QueryFn
    sample_fn: SampleFn | None
    meta_batch_size: int
    seed: int
    batching: str = "vmap"
    reduction: str = "sum"
    fuse_collectives: bool = True
    tasks_per_vmap: int = 0


def task_terms(
    spec: MetaBatch,
    meta_params,
    step: jax.Array,
    indices: jax.Array,
    tasks: TaskBatch | None = None,
    measure: bool | jax.Array = True,
    data=None,
):
    """Per-task outer gradients and metrics of the tasks `indices` (global) of meta-step `step`.

    Args:
        spec: what a meta-step computes.
        meta_params: the algorithm's meta-parameters.
        step: the meta-step (selects the sampled tasks).
        indices: global task indices.
        tasks: the tasks themselves, one per index, when the host samples them
            (`spec.sample_fn` is None); otherwise sampled here on the device.
        measure: whether to score the query set before adaptation too (one more forward
            pass per task); if False, those values are NaN. The trainer measures only the
            last step of each chunk, the one it reports.
        data: what `spec.sample_fn` draws tasks from (None for families without data).

    Returns:
        `(grads, metrics)` stacked over the tasks (leading axis), unweighted: grads shaped
        like `meta_params`; metrics `meta_loss` and `loss_before` (query loss after and
        before adaptation) and `<metric>_after` / `<metric>_before` for each of
        `query_fn`'s metrics.
    """
    root = stream_key(spec.seed, TRAIN_STREAM)

    def one(index_and_task):
        index, task = index_and_task
        task = _task(spec, root, step, index, task, data)
        grads, (after, scores_after) = spec.algorithm.task_grad(meta_params, task, step)
        return grads, _metrics(spec, meta_params, task, after, scores_after, measure)

    xs = (indices, tasks)
    if spec.batching == "loop":
        return jax.lax.map(one, xs)
    if spec.batching == "unroll":
        outs = [one(jax.tree.map(lambda a, j=j: a[j], xs)) for j in range(indices.shape[0])]
        return jax.tree.map(lambda *a: jnp.stack(a), *outs)
    if _vmap_groups(spec, indices.shape[0]) > 1:
        # The trainer only runs groups that divide a device's tasks (one compiled group
        # shape); library callers may pass others, and lax.map runs the rest as a last,
        # smaller group.
        return jax.lax.map(one, xs, batch_size=spec.tasks_per_vmap)
    return jax.vmap(one)(xs)


def _vmap_groups(spec: MetaBatch, num_tasks: int) -> int:
    """How many vmapped groups a device's `num_tasks` tasks run in (`tasks_per_vmap`)."""
    size = spec.tasks_per_vmap
    if spec.batching != "vmap" or size <= 0 or size >= num_tasks:
        return 1
    return -(-num_tasks // size)


def _device_tasks(layout: TaskLayout) -> tuple[jax.Array, jax.Array]:
    """Inside `shard_map`: this device's first global task index, and all of its indices."""
    first = jax.lax.axis_index(AXIS) * layout.per_device
    return first, first + jnp.arange(layout.per_device)


def _task(spec: MetaBatch, root, step, index, task: TaskBatch | None, data) -> TaskBatch:
    """`task` when given, else task `index` of meta-step `step`, sampled here."""
    if task is not None:
        return task
    task = spec.sample_fn(task_key(root, step, index), data)
    if data is not None:
        # Episodes drawn from tables: without the barrier, training on 1 and 4 devices
        # differed in the last bits (tests/test_omniglot_train.py), as XLA fused the
        # drawing into the adaptation differently for different tasks per device; "loop"
        # + "ordered" promise bit-identity.
        task = jax.lax.optimization_barrier(task)
    return task


def _metrics(spec: MetaBatch, meta_params, task, after, scores_after, measure) -> dict:
    """One task's metrics: its query loss and scores after adaptation and before it."""

    def before():
        # Per-step batch norm: slot 0, and the support set "per_step_support" needs.
        step_args = (0, task.support_x) if spec.algorithm.per_step else ()
        return spec.query_fn(meta_params["params"], task.query_x, task.query_y, *step_args)

    if isinstance(measure, bool) and measure:
        loss_before, scores_before = before()
    else:
        # An unbatched predicate keeps this a real branch under vmap and lax.map.
        # NaNs shaped (and device-varying) like `after`, as cond's branches must match.
        def nans():
            nan = jnp.full_like(after, jnp.nan)
            return nan, {k: nan for k in scores_after}

        loss_before, scores_before = jax.lax.cond(measure, before, nans)
    metrics = {"meta_loss": after, "loss_before": loss_before}
    metrics.update({f"{k}_after": v for k, v in scores_after.items()})
    metrics.update({f"{k}_before": v for k, v in scores_before.items()})
    return metrics


def fuses_task_sum(spec: MetaBatch, layout: TaskLayout) -> bool:
    """Whether the meta-step takes one gradient of the weighted meta-batch loss.

    It does when the algorithm has a `meta_loss`, nothing needs per-task gradients (tasks
    batched with vmap and summed: "sum", fused collectives), `layout` pads no task, and
    `tasks_per_vmap` (if set) divides a device's tasks: one gradient per group then.

    Per-task gradients of shared weights are batched matrix products, one per task, and
    then a sum; one gradient of the sum leaves XLA free to contract over the tasks inside
    the backward products (README, "The trainer against a hand-written loop", has what it
    saves). Padding rules it out: a padded task's loss is masked out of the sum, but its
    backward pass still runs with a zero cotangent, and 0 * inf from a diverged padded
    task would be NaN in the shared gradient; per-task gradients mask the padded rows
    after differentiation.
    """
    return (
        spec.algorithm.meta_loss is not None
        and spec.batching == "vmap"
        and spec.reduction == "sum"
        and spec.fuse_collectives
        and layout.padded_size == spec.meta_batch_size
        and (
            _vmap_groups(spec, layout.per_device) == 1
            or layout.per_device % spec.tasks_per_vmap == 0
        )
    )


def weighted_task_sum(
    spec: MetaBatch, meta_params, step, indices, tasks=None, measure=True, data=None
):
    """`task_terms` weighted by `task_weights` and summed over the tasks, in one gradient.

    The same sum `weighted_rows` gives (to rounding), for algorithms with a `meta_loss`:
    the gradient of the weighted sum of the tasks' losses. Only for meta-batches without
    padded tasks (`fuses_task_sum`); the `jnp.where` keeps a padded task's value out of
    the sum, not its backward pass.

    With `tasks_per_vmap` groups (which must divide the tasks), each group's sum is one
    gradient, and the groups run one after another (`lax.map`), their sums added at the end.

    Returns:
        `(grads, metrics)`: grads shaped like `meta_params`, metrics as in `task_terms`,
        each summed over the tasks with their weights.
    """
    groups = _vmap_groups(spec, indices.shape[0])
    if groups == 1:
        return _group_sum(spec, meta_params, step, indices, tasks, measure, data)
    if indices.shape[0] % spec.tasks_per_vmap:
        raise ValueError(
            f"tasks_per_vmap={spec.tasks_per_vmap} does not divide the {indices.shape[0]} "
            f"tasks; use task_terms, which leaves a smaller last group"
        )
    # Each group's sums stacked, then added: groups x parameters, small. A scan with a
    # running total would hold one, but its zero start would need a pcast to match the
    # device-varying sums shard_map carries, and this function also runs outside it.
    grouped = jax.tree.map(lambda a: a.reshape(groups, -1, *a.shape[1:]), (indices, tasks))
    sums = jax.lax.map(
        lambda g: _group_sum(spec, meta_params, step, *g, measure=measure, data=data), grouped
    )
    return jax.tree.map(lambda a: jnp.sum(a, axis=0), sums)


def _group_sum(spec: MetaBatch, meta_params, step, indices, tasks, measure, data):
    """`weighted_task_sum` of the tasks `indices`, all in one vmapped gradient."""
    root = stream_key(spec.seed, TRAIN_STREAM)
    weights = task_weights(indices, spec.meta_batch_size)
    tasks = jax.vmap(lambda i, t: _task(spec, root, step, i, t, data))(indices, tasks)

    def objective(meta_params):
        after, scores = jax.vmap(lambda t: spec.algorithm.meta_loss(meta_params, t, step))(tasks)
        return jnp.sum(jnp.where(weights > 0, weights * after, 0)), (after, scores)

    (_, (after, scores_after)), grads = jax.value_and_grad(objective, has_aux=True)(meta_params)
    metrics = jax.vmap(lambda t, a, s: _metrics(spec, meta_params, t, a, s, measure))(
        tasks, after, scores_after
    )
    w = weights.astype(after.dtype)
    return grads, jax.tree.map(lambda m: jnp.sum(jnp.where(w > 0, w * m, 0)), metrics)


def weighted_rows(terms, weights: jax.Array) -> tuple[jax.Array, Callable]:
    """Flattens per-task terms into rows scaled by their task weights.

    Padded tasks (weight 0) become rows of exact zeros through `jnp.where`, not a
    multiply: a padded task whose loss is NaN would otherwise poison the sum (0 * NaN).

    Returns:
        ((num_tasks, size) rows, `unravel` mapping a row back to `(grads, metrics)`).
    """
    flat = jax.vmap(lambda t: ravel_pytree(t)[0])(terms)
    unravel = ravel_pytree(jax.tree.map(lambda a: a[0], terms))[1]
    w = weights[:, None].astype(flat.dtype)
    return jnp.where(w > 0, w * flat, 0), unravel


def ordered_sum(rows: jax.Array) -> jax.Array:
    """Sum over axis 0 strictly in row order (a scan), so no compiler choice changes it.

    `jnp.sum` leaves the association to XLA, which may pick another reduction tree when the
    surrounding program (device count, fusion) changes.
    """
    total, _ = jax.lax.scan(lambda acc, row: (acc + row, None), jnp.zeros_like(rows[0]), rows)
    return total


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
    step, where each of the sampler's small PRNG kernels runs once per step (README,
    "The trainer against a hand-written loop").
    """
    layout = TaskLayout(spec.meta_batch_size, mesh.shape[AXIS])

    def body(steps, data):
        # The root key inside the program: outside, its PRNG calls would run one by one,
        # each compiled on its own (0.15 s of start-up).
        root = stream_key(spec.seed, TRAIN_STREAM)
        _, indices = _device_tasks(layout)

        def one(step, index):
            return _task(spec, root, step, index, None, data)

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


def make_train_step(
    meta_grad_fn: Callable, tx: optax.GradientTransformation, max_nonfinite_in_row: int = 1
) -> Callable:
    """Returns the pure `(state[, tasks][, measure][, data]) -> (state, metrics)` meta-update.

    `tasks` (the meta-batch, sharded over the task axis) is passed when the host samples
    them; device-sampled families take none. `measure` and `data` are as in `task_terms`.

    `measure` (see `task_terms`) also decides whether `grad_norm` is computed (else NaN),
    and, where the algorithm learns inner rates, their range (`inner_lr_min`,
    `inner_lr_max`).

    A step whose meta-loss, meta-gradient or update is not finite changes neither the
    meta-parameters nor the optimiser state (`nonfinite.guard`); after
    `max_nonfinite_in_row` of them in a row the state stops changing. The metrics
    `skipped_steps` and `nonfinite_in_row` count them.
    """

    def train_step(state: TrainState, tasks: TaskBatch | None = None, measure=True, data=None):
        grads, metrics = meta_grad_fn(state.meta_params, state.step, tasks, measure, data)
        # Keeps XLA from fusing the update into the gradient computation: fusion (and so
        # FMA contraction) there depends on the device count, and would break the
        # bit-identity that task_batching="loop" + reduction="ordered" promise.
        grads = jax.lax.optimization_barrier(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.meta_params)
        meta_params = optax.apply_updates(state.meta_params, updates)
        new = state.replace(step=state.step + 1, meta_params=meta_params, opt_state=opt_state)
        # The optimiser state too: Adam's second moment can overflow on finite gradients.
        finite = nonfinite.all_finite((metrics["meta_loss"], grads, meta_params, opt_state))
        state = nonfinite.guard(state, new, finite, max_nonfinite_in_row)
        # Running batch-norm statistics travel as "gradients" (state.running_average).
        grad_norm = _when(measure, lambda: optax.tree.norm(state_lib.learned(grads)))
        metrics = {
            **metrics,
            "grad_norm": grad_norm,
            "skipped_steps": state.skipped_steps,
            "nonfinite_in_row": state.nonfinite_in_row,
            **_rate_range(state.meta_params, measure),
        }
        return state, metrics

    return train_step


def _rate_range(meta_params, measure) -> dict[str, jax.Array]:
    """The least and greatest learned inner rate (Meta-SGD's; MAML++'s), if any.

    Rates that wander far from the inner learning rate, or below zero, are what the
    README's "MAML++ with five inner steps" saw before a run diverged; these let a user
    watch them in TensorBoard (`train/inner_lr_min`, `train/inner_lr_max`).
    """
    if not isinstance(meta_params, dict) or RATES not in meta_params:
        return {}
    leaves = jax.tree.leaves(meta_params[RATES])
    flat = jnp.concatenate([jnp.ravel(r).astype(jnp.float32) for r in leaves])
    return {
        "inner_lr_min": _when(measure, lambda: jnp.min(flat)),
        "inner_lr_max": _when(measure, lambda: jnp.max(flat)),
    }


def _when(measure: bool | jax.Array, fn: Callable[[], jax.Array]) -> jax.Array:
    """`fn()` (a float scalar) if `measure`, else NaN: a real branch when `measure` is traced.

    The trainer reports only a chunk's last step, so the others skip what only a report
    reads (measured: the gradient norm's reduction cost ~1.5% of the sinusoid step).
    """
    if isinstance(measure, bool) and measure:
        return fn()
    out = jax.eval_shape(fn)
    nan = lambda: jnp.full(out.shape, jnp.nan, out.dtype)  # noqa: E731
    return nan() if isinstance(measure, bool) else jax.lax.cond(measure, fn, nan)


def make_multi_step_over(train_step: Callable) -> Callable:
    """Returns jitted `(state, batches) -> (state, metrics)` over host-sampled batches.

    `batches` stacks one meta-batch per step on a leading axis (sharded
    `P(None, "tasks")`); the steps run as one `lax.scan`, like `make_multi_step`, and
    likewise only the last step's pre-adaptation metrics are measured.
    """

    @functools.partial(jax.jit, donate_argnums=0, compiler_options=xla_options.compiler_options())
    def run(state, batches):
        n = jax.tree.leaves(batches)[0].shape[0]
        return jax.lax.scan(lambda s, xs: train_step(s, *xs), state, (batches, _last_only(n)))

    return run


def make_multi_step(train_step: Callable, sampler: Callable | None = None) -> Callable:
    """Returns jitted `(state, n[, data]) -> (state, metrics stacked over n steps)`.

    `data` is what device-sampled tasks are drawn from (`task_terms`), an argument rather
    than a constant the step closes over: XLA would embed a closed-over table in the
    program (and constant-fold over it at compile time).

    Running n steps in one executable (a `lax.scan`) removes n - 1 dispatches and keeps
    only one executable in flight per chunk (README trap 2), compiled with
    `xla_options.compiler_options()`. The state is donated. The
    metrics of every step but the last hold NaN before-adaptation values and gradient
    norms (`_last_only`).

    With `sampler` (`make_chunk_sampler`), the chunk's tasks are sampled first, all at
    once, and the steps scan over them; without, each step samples its own.
    """

    @functools.partial(
        jax.jit,
        static_argnums=1,
        donate_argnums=0,
        compiler_options=xla_options.compiler_options(),
    )
    def run(state, n: int, data=None):
        if sampler is None:
            return jax.lax.scan(lambda s, m: train_step(s, None, m, data), state, _last_only(n))
        batches = sampler(state.step + jnp.arange(n), data)
        return jax.lax.scan(lambda s, xs: train_step(s, *xs, data), state, (batches, _last_only(n)))

    return run


def make_chunk_sample(sampler: Callable) -> Callable:
    """Returns jitted `(start, n[, data]) -> tasks` of the meta-steps start..start+n-1.

    `sampler` is `make_chunk_sampler`'s; the result feeds `make_multi_step_over`. The
    two programs together run what `make_multi_step(train_step, sampler)` runs in one,
    but compile separately, side by side (the trainer's `_DeviceRun`).
    """

    @functools.partial(jax.jit, static_argnums=1, compiler_options=xla_options.compiler_options())
    def sample_chunk(start, n: int, data=None):
        return sampler(start + jnp.arange(n), data)

    return sample_chunk


def _last_only(n: int) -> jax.Array:
    """Per-step `measure` flags of a chunk of n steps: only the last one, the one reported.

    Scoring the query set before adaptation is a forward pass per task that no gradient
    needs (measured: ~25% of an Omniglot 5-way 1-shot step with 15 queries per class).
    """
    return jnp.arange(n) == n - 1


def meta_batch_spec(config: ml_collections.ConfigDict, problem) -> MetaBatch:
    """The MetaBatch a config describes, for its `problem.Problem`."""
    return MetaBatch(
        algorithm=problem.algorithm,
        query_fn=problem.query_fn,
        sample_fn=problem.sample_fn,
        meta_batch_size=config.meta_batch_size,
        seed=config.seed,
        batching=resolve_batching(config.task_batching),
        reduction=config.reduction,
        tasks_per_vmap=config.get("tasks_per_vmap", 0),
    )
