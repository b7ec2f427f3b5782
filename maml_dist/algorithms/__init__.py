"""The MAML family behind one interface, and an explicit registry of its members.

Every algorithm is built by `make(loss_fn, inner, query_fn)` from its module and returns an
`Algorithm` (see `maml_dist.algorithms.base`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from maml_dist.algorithms import anil, boil, imaml, maml, mamlpp, metasgd, reptile
from maml_dist.algorithms.base import (
    Algorithm,
    InnerConfig,
    StepNet,
    adaptation_curve,
    loss_query_fn,
    make_apply,
    make_head_split,
    make_loss_fn,
    make_query_fn,
    make_step_net,
    sgd_step,
)
from maml_dist.errors import UserInputError
from maml_dist.types import HeadSplit, LossFn, QueryFn

REGISTRY: dict[str, Callable[..., Algorithm]] = {
    "maml": maml.make,
    "fomaml": maml.make_first_order,
    "metasgd": metasgd.make,
    "anil": anil.make,
    "boil": boil.make,
    "reptile": reptile.make,
    "imaml": imaml.make,
    "mamlpp": mamlpp.make,
}

__all__ = [
    "REGISTRY",
    "Algorithm",
    "InnerConfig",
    "StepNet",
    "UserInputError",
    "adaptation_curve",
    "learns_rates",
    "loss_query_fn",
    "make_algorithm",
    "make_apply",
    "make_head_split",
    "make_loss_fn",
    "make_query_fn",
    "make_step_net",
    "sgd_step",
]


# The algorithms that adapt the network's head alone, and so can use its body/head split.
USES_HEAD_SPLIT = frozenset({"anil"})
# MAML and first-order MAML on a network with per-step batch norm are MAML++ with its other
# switches off: the only implementation that carries per-step state through the inner loop.
_AS_MAMLPP = {"maml": False, "fomaml": True}


def learns_rates(name: str, lslr: bool) -> bool:
    """Whether algorithm `name` meta-learns inner rates (`meta_params[RATES]`).

    Meta-SGD always does (one rate per weight); MAML++ with `lslr` (one per tensor and
    inner step).
    """
    return name == "metasgd" or (name == "mamlpp" and lslr)


def make_algorithm(
    name: str,
    loss_fn: LossFn,
    inner: InnerConfig,
    query_fn: QueryFn | None = None,
    head_split: HeadSplit | None = None,
    step_net: StepNet | None = None,
) -> Algorithm:
    """Builds the registered algorithm `name`.

    Args:
        name: a key of REGISTRY.
        loss_fn: `(params, x, y) -> scalar`, the inner (support set) loss.
        inner: the algorithm's static settings.
        query_fn: `(params, x, y) -> (loss, metrics)` on the query set; default the loss.
        head_split: the network as body then head (`make_head_split`), for the
            algorithms in USES_HEAD_SPLIT; ignored by the others.
        step_net: the network in meta-training mode (`make_step_net`), for MAML++; with
            per-step batch norm also for MAML and first-order MAML (run as MAML++ with
            its other switches off). Ignored by the others.

    Raises:
        UserInputError: if no algorithm has that name, or the network has per-step batch
            norm and the algorithm cannot carry it.
    """
    try:
        factory = REGISTRY[name]
    except KeyError:
        raise UserInputError(
            f"unknown algorithm {name!r}; choose one of {', '.join(REGISTRY)} "
            f"(--config.algorithm=NAME)"
        ) from None
    per_step = step_net is not None and step_net.per_step
    if per_step and name in _AS_MAMLPP:
        first_order = _AS_MAMLPP[name] or inner.first_order
        plain = dataclasses.replace(
            inner, msl=False, lslr=False, doa_steps=0, first_order=first_order
        )
        return mamlpp.make(loss_fn, plain, query_fn, step_net)._replace(name=name)
    if per_step and name != "mamlpp":
        raise UserInputError(
            f"algorithm {name!r} cannot carry per-step batch-norm state; pass "
            f"--config.model.bn_mode=transductive (or none), or use maml, fomaml or mamlpp"
        )
    if name == "mamlpp":
        return factory(loss_fn, inner, query_fn, step_net)
    if name in USES_HEAD_SPLIT:
        return factory(loss_fn, inner, query_fn, head_split)
    return factory(loss_fn, inner, query_fn)
