"""MAML (Finn et al. 2017) and first-order MAML.

The meta-gradient of the query loss after `steps` inner SGD steps is taken through every
step: `jax.grad` of a function whose `lax.scan` itself calls `jax.grad` computes

    grad_theta L_Q(theta_k) = (I - a H_0)(I - a H_1) ... (I - a H_{k-1}) grad L_Q(theta_k)

with k Hessian-vector products in reverse mode; no Hessian is formed. First-order MAML
stops the gradient at each inner gradient, so d theta_k / d theta_0 = I and the
meta-gradient is the query gradient at the adapted parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from maml_dist.algorithms.base import (
    Algorithm,
    InnerConfig,
    loss_query_fn,
    make_adapt,
    run_steps,
    sgd_step,
)
from maml_dist.types import LossFn, Params, QueryFn, TaskBatch

InnerStep = Callable[[Params, Any, Any, bool], Params]
"""`step(params, x, y, first_order) -> params`: one inner step on (x, y)."""


def steps_of(step: InnerStep, params: Params, x, y, inner: InnerConfig) -> Params:
    """`inner.steps` of `step` on (x, y), differentiable (second order unless first_order)."""
    return run_steps(
        lambda p, _: step(p, x, y, inner.first_order),
        params,
        inner.steps,
        inner.remat,
        inner.unroll,
    )


def sgd(loss_fn: LossFn, lr) -> InnerStep:
    """MAML's inner step: plain SGD on `loss_fn` at rate `lr`."""
    return lambda params, x, y, first_order: sgd_step(loss_fn, params, x, y, lr, first_order)


def inner_loop(loss_fn: LossFn, params: Params, x, y, inner: InnerConfig) -> Params:
    """MAML's inner loop: `inner.steps` SGD steps on (x, y) at rate `inner.lr`."""
    return steps_of(sgd(loss_fn, inner.lr), params, x, y, inner)


def make(loss_fn: LossFn, inner: InnerConfig, query_fn: QueryFn | None = None) -> Algorithm:
    """MAML: second order unless `inner.first_order`.

    Args:
        loss_fn: `loss_fn(params, x, y)`, adapted on the support set.
        inner: inner-loop settings (`lr`, `steps`, `first_order`, `remat`).
        query_fn: `(params, x, y) -> (loss, metrics)` on the query set; default the loss.
    """
    name = "fomaml" if inner.first_order else "maml"
    return make_with_step(name, sgd(loss_fn, inner.lr), inner, query_fn or loss_query_fn(loss_fn))


def make_with_step(name: str, step: InnerStep, inner: InnerConfig, query_fn: QueryFn) -> Algorithm:
    """An algorithm that is MAML but for its inner step (BOIL's steps skip the head).

    The meta-objective is the query loss after `inner.steps` of `step` on the support set,
    differentiated through them (second order unless `inner.first_order`); meta-test steps
    are `step` without `first_order`.
    """

    def meta_loss(meta_params, task: TaskBatch, meta_step):
        del meta_step  # the objective does not change with the meta-step
        adapted = steps_of(step, meta_params["params"], task.support_x, task.support_y, inner)
        return query_fn(adapted, task.query_x, task.query_y)

    def task_grad(meta_params, task: TaskBatch, meta_step):
        (loss, metrics), grads = jax.value_and_grad(meta_loss, has_aux=True)(
            meta_params, task, meta_step
        )
        return grads, (loss, metrics)

    def inner_step(meta_params, params, x, y, j):
        del meta_params, j
        return step(params, x, y, False)

    return Algorithm(
        name,
        lambda params: {"params": params},
        task_grad,
        inner_step,
        make_adapt(inner_step),
        meta_loss=meta_loss,
    )


def make_first_order(
    loss_fn: LossFn, inner: InnerConfig, query_fn: QueryFn | None = None
) -> Algorithm:
    """First-order MAML: MAML with `first_order=True`."""
    return make(loss_fn, dataclasses.replace(inner, first_order=True), query_fn)
