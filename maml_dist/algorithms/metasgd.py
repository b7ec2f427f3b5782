"""Meta-SGD (Li et al. 2017): a learned inner learning rate for every parameter element.

The meta-parameters are `{"params": theta, "inner_lr": alpha}` with `alpha` shaped like
`theta` and initialised at `inner.lr`. An inner step is `theta - alpha * grad L_S(theta)`
(elementwise), and both theta and alpha get the meta-gradient through the inner steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maml_dist.algorithms.base import (
    Algorithm,
    InnerConfig,
    elementwise_sgd_step,
    loss_query_fn,
    make_adapt,
    run_steps,
)
from maml_dist.types import RATES, LossFn, QueryFn, TaskBatch


def make(loss_fn: LossFn, inner: InnerConfig, query_fn: QueryFn | None = None) -> Algorithm:
    """Meta-SGD; `inner.first_order` drops the second-order terms of theta's gradient.

    Args:
        loss_fn: `loss_fn(params, x, y)`, adapted on the support set.
        inner: `lr` (the rates' initial value), `steps`, `first_order`, `remat`.
        query_fn: `(params, x, y) -> (loss, metrics)` on the query set; default the loss.
    """
    query_fn = query_fn or loss_query_fn(loss_fn)

    def init(params):
        return {
            "params": params,
            RATES: jax.tree.map(lambda p: jnp.full_like(p, inner.lr), params),
        }

    def task_grad(meta_params, task: TaskBatch, step):
        del step

        def objective(meta):
            adapted = run_steps(
                lambda p, _: elementwise_sgd_step(
                    loss_fn,
                    p,
                    task.support_x,
                    task.support_y,
                    meta[RATES],
                    inner.first_order,
                ),
                meta["params"],
                inner.steps,
                inner.remat,
                inner.unroll,
            )
            return query_fn(adapted, task.query_x, task.query_y)

        (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(meta_params)
        return grads, (loss, metrics)

    def inner_step(meta_params, params, x, y, j):
        del j
        return elementwise_sgd_step(loss_fn, params, x, y, meta_params[RATES])

    return Algorithm("metasgd", init, task_grad, inner_step, make_adapt(inner_step))
