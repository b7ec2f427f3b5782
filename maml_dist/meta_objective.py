"""What one meta-step computes over a device's tasks: the tasks, their terms, their sum.

Nothing here knows the mesh: `parallel` lays a `MetaBatch` over devices and calls
`task_terms` or `weighted_task_sum` on each device's share of the global task indices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.flatten_util import ravel_pytree

from maml_dist.algorithms import Algorithm
from maml_dist.types import TRAIN_STREAM, QueryFn, TaskBatch, stream_key, task_key

SampleFn = Callable[[jax.Array, Any], TaskBatch]
"""`sample_fn(key, data) -> TaskBatch`: one task from its key and the device-resident data
(an `EpisodeTables` pytree for image episodes drawn on the device; None for families that
need no data, such as the sinusoids)."""


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
        task = draw_task(spec, root, step, index, task, data)
        grads, (after, scores_after) = spec.algorithm.task_grad(meta_params, task, step)
        return grads, _metrics(spec, meta_params, task, after, scores_after, measure)

    xs = (indices, tasks)
    if spec.batching == "loop":
        return jax.lax.map(one, xs)
    if spec.batching == "unroll":
        outs = [one(jax.tree.map(lambda a, j=j: a[j], xs)) for j in range(indices.shape[0])]
        return jax.tree.map(lambda *a: jnp.stack(a), *outs)
    if vmap_groups(spec, indices.shape[0]) > 1:
        # The trainer only runs groups that divide a device's tasks (one compiled group
        # shape); library callers may pass others, and lax.map runs the rest as a last,
        # smaller group.
        return jax.lax.map(one, xs, batch_size=spec.tasks_per_vmap)
    return jax.vmap(one)(xs)


def vmap_groups(spec: MetaBatch, num_tasks: int) -> int:
    """How many vmapped groups a device's `num_tasks` tasks run in (`tasks_per_vmap`)."""
    size = spec.tasks_per_vmap
    if spec.batching != "vmap" or size <= 0 or size >= num_tasks:
        return 1
    return -(-num_tasks // size)


def draw_task(spec: MetaBatch, root, step, index, task: TaskBatch | None, data) -> TaskBatch:
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
    the backward products (docs/benchmarks.md, "The trainer against a hand-written loop",
    has what it saves). Padding rules it out: a padded task's loss is masked out of the sum, but its
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
            vmap_groups(spec, layout.per_device) == 1
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
    groups = vmap_groups(spec, indices.shape[0])
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
    tasks = jax.vmap(lambda i, t: draw_task(spec, root, step, i, t, data))(indices, tasks)

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
