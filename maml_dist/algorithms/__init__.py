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
    make_loss_fn,
    make_query_fn,
    sgd_step,
)
from maml_dist.errors import UserInputError
from maml_dist.types import LossFn, QueryFn

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
    "make_loss_fn",
    "make_query_fn",
    "sgd_step",
]


def make_algorithm(
    name: str, loss_fn: LossFn, inner: InnerConfig, query_fn: QueryFn | None = None
) -> Algorithm:
    """Builds the registered algorithm `name`.

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
    return factory(loss_fn, inner, query_fn)
