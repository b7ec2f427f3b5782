"""ANIL (Raghu et al. 2020): almost no inner loop; only the network's head adapts.

The inner steps update `params[inner.head]` alone; the body (every other top-level entry
of `params`) stays at its meta-learned value during adaptation and is meta-learned by the
gradient of the query loss, including the path through the head's inner steps (which
depend on the body's features of the support set).

Given the network's `HeadSplit` (every network in `maml_dist.models` has one), the body
runs once per task on the support set and once on the query set, and the inner steps run
the head alone on those features; the body's backward pass then runs once, whatever the
number of inner steps. Without a split the whole network runs in every inner step (same
result, more cost).
"""

from __future__ import annotations

import jax

from maml_dist.algorithms.base import (
    Algorithm,
    InnerConfig,
    loss_query_fn,
    run_steps,
    sgd_step,
)
from maml_dist.errors import UserInputError
from maml_dist.types import HeadSplit, LossFn, Params, QueryFn, TaskBatch


def split(params: Params, head: str, algorithm: str = "ANIL") -> tuple[Params, Params]:
    """(body, head) of `params`, whose top-level key `head` names the head.

    Raises:
        UserInputError: if the network has no such entry (naming `algorithm`, which
            splits it: ANIL adapts the head alone, BOIL everything else).
    """
    if head not in params:
        raise UserInputError(
            f"{algorithm} splits the network at its head, but its parameters have no "
            f"{head!r} entry (top-level entries: {sorted(params)}); name the last layer "
            f"{head!r}"
        )
    return {k: v for k, v in params.items() if k != head}, params[head]


def make(
    loss_fn: LossFn,
    inner: InnerConfig,
    query_fn: QueryFn | None = None,
    head_split: HeadSplit | None = None,
) -> Algorithm:
    """ANIL: `inner.steps` SGD steps on the head only; second order unless `first_order`.

    Args:
        loss_fn: `loss_fn(params, x, y)`, adapted on the support set.
        inner: `lr`, `steps`, `first_order`, `remat`, and `head`, the head's key.
        query_fn: `(params, x, y) -> (loss, metrics)` on the query set; default the loss.
        head_split: the network as body then head; with it the body runs once per set.
    """
    query_fn = query_fn or loss_query_fn(loss_fn)
    return _make_split(inner, head_split or whole_network_split(loss_fn, query_fn, inner.head))


def whole_network_split(loss_fn: LossFn, query_fn: QueryFn, head: str) -> HeadSplit:
    """The split of a network that cannot run its body alone.

    Its "features" are the body's parameters and the input themselves, so every head step
    runs the whole network: the same result as a real split, at more cost.
    """

    def whole(head_params, feats):
        body, x = feats
        return {**body, head: head_params}, x

    return HeadSplit(
        features=lambda body, x: (body, x),
        loss_fn=lambda h, feats, y: loss_fn(*whole(h, feats), y),
        query_fn=lambda h, feats, y: query_fn(*whole(h, feats), y),
    )


def _make_split(inner: InnerConfig, fns: HeadSplit) -> Algorithm:
    """ANIL whose inner steps run the head alone on features the body computes once."""

    def head_steps(head, feats, y, num_steps, first_order=False, remat=False, unroll=0):
        return run_steps(
            lambda h, _: sgd_step(fns.loss_fn, h, feats, y, inner.lr, first_order),
            head,
            num_steps,
            remat,
            unroll,
        )

    def task_grad(meta_params, task: TaskBatch, step):
        del step

        def objective(params):
            body, head = split(params, inner.head)
            head = head_steps(
                head,
                fns.features(body, task.support_x),
                task.support_y,
                inner.steps,
                inner.first_order,
                inner.remat,
                inner.unroll,
            )
            return fns.query_fn(head, fns.features(body, task.query_x), task.query_y)

        (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(meta_params["params"])
        return {"params": grads}, (loss, metrics)

    def inner_step(meta_params, params, x, y, j):
        del meta_params, j
        body, head = split(params, inner.head)
        return {**body, inner.head: head_steps(head, fns.features(body, x), y, 1)}

    def adapt(meta_params, x, y, num_steps):
        body, head = split(meta_params["params"], inner.head)
        return {**body, inner.head: head_steps(head, fns.features(body, x), y, num_steps)}

    return Algorithm("anil", lambda p: {"params": p}, task_grad, inner_step, adapt)
