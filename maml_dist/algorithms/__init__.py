"""The MAML family behind one interface, and an explicit registry of its members.

Every algorithm is built by `make(loss_fn, inner, query_fn)` from its module and returns an
`Algorithm` (see `maml_dist.algorithms.base`).
"""

from __future__ import annotations

from collections.abc import Callable

from maml_dist.algorithms import anil, imaml, maml, metasgd, reptile
from maml_dist.algorithms.base import (
    Algorithm,
    InnerConfig,
    adaptation_curve,
    loss_query_fn,
    make_head_split,
    make_loss_fn,
    make_query_fn,
    sgd_step,
)
from maml_dist.errors import UserInputError
from maml_dist.types import HeadSplit, LossFn, QueryFn

REGISTRY: dict[str, Callable[..., Algorithm]] = {
    "maml": maml.make,
    "fomaml": maml.make_first_order,
    "metasgd": metasgd.make,
    "anil": anil.make,
    "reptile": reptile.make,
    "imaml": imaml.make,
}

__all__ = [
    "REGISTRY",
    "Algorithm",
    "InnerConfig",
    "UserInputError",
    "adaptation_curve",
    "loss_query_fn",
    "make_algorithm",
    "make_head_split",
    "make_loss_fn",
    "make_query_fn",
    "sgd_step",
]


# The algorithms that adapt the network's head alone, and so can use its body/head split.
USES_HEAD_SPLIT = frozenset({"anil"})


def make_algorithm(
    name: str,
    loss_fn: LossFn,
    inner: InnerConfig,
    query_fn: QueryFn | None = None,
    head_split: HeadSplit | None = None,
) -> Algorithm:
    """Builds the registered algorithm `name`.

    Args:
        name: a key of REGISTRY.
        loss_fn: `(params, x, y) -> scalar`, the inner (support set) loss.
        inner: the algorithm's static settings.
        query_fn: `(params, x, y) -> (loss, metrics)` on the query set; default the loss.
        head_split: the network as body then head (`make_head_split`), for the
            algorithms in USES_HEAD_SPLIT; ignored by the others.

    Raises:
        UserInputError: if no algorithm has that name.
    """
    try:
        factory = REGISTRY[name]
    except KeyError:
        raise UserInputError(
            f"unknown algorithm {name!r}; choose one of {', '.join(REGISTRY)} "
            f"(--config.algorithm=NAME)"
        ) from None
    if name in USES_HEAD_SPLIT:
        return factory(loss_fn, inner, query_fn, head_split)
    return factory(loss_fn, inner, query_fn)
