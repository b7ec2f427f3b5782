"""Pure MAML / FOMAML: inner adaptation, per-task losses and the meta-objective.

Everything here is a pure function of its arguments and is safe under `jit`, `vmap`,
`grad` and `shard_map`. The meta-gradient of `meta_objective` is second order unless
`first_order=True`: `jax.grad` differentiates through every inner SGD step, Hessian-vector
products included. FOMAML stops the gradient at the inner gradients, so that
d(theta_k)/d(theta_0) = I and the meta-gradient is the query gradient at the adapted
parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from maml_dist.tasks.base import TaskBatch

Params = Any
# loss_fn(params, x, y) -> scalar
LossFn = Callable[[Params, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class InnerConfig:
    """Static (hashable, never traced) settings of the inner loop.

    Attributes:
        lr: inner SGD step size (alpha).
        steps: number of inner SGD steps.
        first_order: drop second-order terms (FOMAML).
        remat: recompute each inner step in the backward pass (`jax.checkpoint`),
            trading compute for memory that then no longer grows with `steps`' activations.
    """

    lr: float
    steps: int
    first_order: bool = False
    remat: bool = False


def sgd_step(loss_fn: LossFn, params: Params, x, y, lr: float, first_order: bool) -> Params:
    """One inner step theta - lr * grad L_support(theta)."""
    grads = jax.grad(loss_fn)(params, x, y)
    if first_order:
        grads = jax.lax.stop_gradient(grads)
    return jax.tree.map(lambda p, g: p - lr * g, params, grads)


def adapt(loss_fn: LossFn, params: Params, x, y, inner: InnerConfig) -> Params:
    """Adapts `params` to the support set (x, y) with `inner.steps` SGD steps (`lax.scan`)."""

    def body(p, _):
        return sgd_step(loss_fn, p, x, y, inner.lr, inner.first_order), None

    if inner.remat:
        body = jax.checkpoint(body)
    adapted, _ = jax.lax.scan(body, params, None, length=inner.steps)
    return adapted


def task_losses(
    loss_fn: LossFn, params: Params, task: TaskBatch, inner: InnerConfig
) -> tuple[jax.Array, jax.Array]:
    """Query loss of one task after and before adaptation.

    Returns:
        (loss_after, loss_before): scalars.
    """
    adapted = adapt(loss_fn, params, task.support_x, task.support_y, inner)
    after = loss_fn(adapted, task.query_x, task.query_y)
    before = loss_fn(params, task.query_x, task.query_y)
    return after, before


def meta_objective(
    loss_fn: LossFn,
    params: Params,
    tasks: TaskBatch,
    weights: jax.Array,
    inner: InnerConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted sum of post-adaptation query losses over a batch of tasks.

    With weights 1/meta_batch_size on real tasks and 0 on padding, the sum over all
    devices of this objective is the meta-batch mean, whatever the padding.

    Args:
        loss_fn: per-task loss, `loss_fn(params, x, y)`.
        params: meta-parameters theta_0.
        tasks: a TaskBatch with a leading task axis.
        weights: (num_tasks,) weight of each task in the meta-loss.
        inner: inner-loop settings.

    Returns:
        (objective, aux) with aux holding the weighted sum of the pre-adaptation losses.
    """
    after, before = jax.vmap(lambda t: task_losses(loss_fn, params, t, inner))(tasks)
    before = jax.lax.stop_gradient(before)
    return jnp.sum(weights * after), {"loss_before": jnp.sum(weights * before)}


def adaptation_curve(
    loss_fn: LossFn,
    params: Params,
    task: TaskBatch,
    lr: float,
    steps: int,
    metrics: tuple[LossFn, ...] | None = None,
) -> jax.Array:
    """Query metrics of one task after 0, 1, ..., `steps` inner SGD steps on `loss_fn`.

    Args:
        loss_fn: the loss adapted on.
        params: meta-parameters.
        task: one task.
        lr: inner step size.
        steps: inner steps.
        metrics: functions `(params, x, y) -> scalar` scored on the query set after
            each step; default `(loss_fn,)`.

    Returns:
        Array of shape (steps + 1, len(metrics)).
    """
    metrics = (loss_fn,) if metrics is None else metrics

    def scores(p):
        return jnp.stack([m(p, task.query_x, task.query_y) for m in metrics])

    def body(p, _):
        query = scores(p)
        p = sgd_step(loss_fn, p, task.support_x, task.support_y, lr, first_order=True)
        return p, query

    final, history = jax.lax.scan(body, params, None, length=steps)
    return jnp.concatenate([history, scores(final)[None]])


def make_loss_fn(model, task_loss: Callable[[jax.Array, jax.Array], jax.Array]) -> LossFn:
    """Builds `loss_fn(params, x, y)` from a flax module and a task's loss on predictions."""

    def loss_fn(params, x, y):
        return task_loss(model.apply({"params": params}, x), y)

    return loss_fn


def make_loss_and_score_fn(
    model,
    task_loss: Callable[[jax.Array, jax.Array], jax.Array],
    score: Callable[[jax.Array, jax.Array], jax.Array],
) -> Callable:
    """Builds `(params, x, y) -> (loss, score)`, both from one forward pass."""

    def loss_and_score(params, x, y):
        predictions = model.apply({"params": params}, x)
        return task_loss(predictions, y), score(predictions, y)

    return loss_and_score
