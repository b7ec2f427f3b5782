"""BOIL (Oh et al. 2021, "BOIL: Towards Representation Change for Few-shot Learning").

Body only inner loop, ANIL's mirror: the inner steps update every top-level entry of
`params` but the head, `params[inner.head]`, which keeps its meta-learned value during
adaptation (the reference code's `classifier_step_size` of 0); the outer gradient
meta-learns body and head, second order through the body's steps unless `first_order`.
Batch-norm scales and offsets belong to the body and adapt with it.

Where ANIL reuses the body's features, BOIL must change them: the head cannot move, so a
task is fitted by moving its images' features towards the fixed class directions. An
inner step costs what MAML's does (the whole network forward and back), less the head's
update.

The reference code trains and tests with one inner step; any number works here. Its
options beyond the body-only loop (a head frozen in the outer loop too, an orthogonal or
centred head, a ResNet-12 whose last block drops the residual) are not offered.
"""

from __future__ import annotations

import jax

from maml_dist.algorithms.anil import split
from maml_dist.algorithms.base import Algorithm, InnerConfig, loss_query_fn
from maml_dist.algorithms.maml import make_with_step
from maml_dist.types import LossFn, Params, QueryFn


def body_step(
    loss_fn: LossFn, params: Params, x, y, lr, head: str, first_order: bool = False
) -> Params:
    """One inner SGD step on every entry of `params` but `params[head]`, which is kept."""
    body, head_params = split(params, head, "BOIL")
    grads = jax.grad(lambda b: loss_fn({**b, head: head_params}, x, y))(body)
    if first_order:
        grads = jax.lax.stop_gradient(grads)
    body = jax.tree.map(lambda p, g: p - lr * g, body, grads)
    return {**body, head: head_params}


def make(loss_fn: LossFn, inner: InnerConfig, query_fn: QueryFn | None = None) -> Algorithm:
    """BOIL: `inner.steps` SGD steps on the body only; second order unless `first_order`.

    Args:
        loss_fn: `loss_fn(params, x, y)`, adapted on the support set.
        inner: `lr`, `steps`, `first_order`, `remat`, `unroll`, and `head`, the key of the
            entry the inner loop leaves alone.
        query_fn: `(params, x, y) -> (loss, metrics)` on the query set; default the loss.
    """

    def step(params, x, y, first_order):
        return body_step(loss_fn, params, x, y, inner.lr, inner.head, first_order)

    return make_with_step("boil", step, inner, query_fn or loss_query_fn(loss_fn))
