"""Reptile (Nichol et al. 2018): move the initialisation towards the adapted weights.

For each task, `steps` plain SGD steps on the support set give phi; the task's outer
"gradient" is theta - phi, which the meta-optimiser (Adam by default) applies as it would a
gradient, so sharding, reduction, checkpoints and logging are those of every algorithm.
Nothing is differentiated through the inner loop, so memory does not grow with `steps`.
With one step, theta - phi = lr * grad L_S(theta): Reptile needs several inner steps.
`first_order` and `remat` do not apply (nothing is differentiated).
"""

from __future__ import annotations

import jax

from maml_dist.algorithms.base import (
    Algorithm,
    InnerConfig,
    loss_query_fn,
    make_adapt,
    sgd_step,
)
from maml_dist.types import LossFn, QueryFn, TaskBatch


def make(loss_fn: LossFn, inner: InnerConfig, query_fn: QueryFn | None = None) -> Algorithm:
    """Reptile with `inner.steps` SGD steps of size `inner.lr` on each task's support set.

    Args:
        loss_fn: `loss_fn(params, x, y)`, adapted on the support set.
        inner: `lr` and `steps`.
        query_fn: `(params, x, y) -> (loss, metrics)`, reported on the query set after
            adaptation (not differentiated).
    """
    query_fn = query_fn or loss_query_fn(loss_fn)

    def inner_step(meta_params, params, x, y, j):
        del meta_params, j
        return sgd_step(loss_fn, params, x, y, inner.lr)

    adapt = make_adapt(inner_step)

    def task_grad(meta_params, task: TaskBatch, step):
        del step
        theta = meta_params["params"]
        phi = jax.lax.stop_gradient(adapt(meta_params, task.support_x, task.support_y, inner.steps))
        loss, metrics = query_fn(phi, task.query_x, task.query_y)
        return {"params": jax.tree.map(lambda t, p: t - p, theta, phi)}, (loss, metrics)

    return Algorithm("reptile", lambda p: {"params": p}, task_grad, inner_step, adapt)
