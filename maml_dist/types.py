"""Leaf types shared across the package: task batches, key streams and function shapes.

This module imports nothing from `maml_dist`, so any module (the data readers, the pure
core, the task families) can use these without pulling in the task registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
from flax import struct

Params = Any
"""A pytree of network weights."""

MetaParams = dict[str, Any]
"""What an algorithm meta-learns: `{"params": weights, ...}` plus its own extras."""

LossFn = Callable[[Params, jax.Array, jax.Array], jax.Array]
"""`loss_fn(params, x, y) -> scalar`: one task's loss on one set.

The functions `maml_dist.algorithms.make_loss_fn` builds also take `step`, the number of
inner updates `params` have had, which networks with per-step batch norm need
(`Algorithm.per_step`); the others ignore it.
"""

QueryFn = Callable[[Params, jax.Array, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
"""`query_fn(params, x, y) -> (loss, {metric: value})` from one forward pass (and `step`,
as for LossFn)."""

HEAD = "head"
"""The name of every network's last layer: the part ANIL adapts and BOIL keeps."""

RATES = "inner_lr"
"""The key of `meta_params` under which Meta-SGD and MAML++ (LSLR) keep learned inner rates."""


class HeadSplit(NamedTuple):
    """A network as body then head, for algorithms that adapt the head alone (ANIL).

    Attributes:
        features: `(params, x) -> features` (a pytree), the body's output (the head's
            input); reads every entry of `params` but `params[HEAD]`.
        loss_fn: `(head_params, features, y) -> scalar`, the task loss of the head alone.
        query_fn: `(head_params, features, y) -> (loss, {metric: value})`.
    """

    features: Callable[[Params, jax.Array], jax.Array]
    loss_fn: LossFn
    query_fn: QueryFn


# Disjoint key streams. Training, in-training validation and meta-testing draw their tasks
# from different streams of the seed, so meta-test tasks are never meta-training tasks.
TRAIN_STREAM = 0
VALIDATION_STREAM = 1
TEST_STREAM = 2
# The seed meta-test tasks are drawn with, whatever the run's own seed, so that runs of
# different seeds (and algorithms) are scored on the same tasks.
TEST_SEED = 0
IMAGE_STREAM = 3  # the one task pictured in TensorBoard during training


@struct.dataclass
class TaskBatch:
    """Support and query sets of one task, or of a batch of tasks (leading axis)."""

    support_x: jax.Array
    support_y: jax.Array
    query_x: jax.Array
    query_y: jax.Array


def stream_key(seed: int, stream: int) -> jax.Array:
    """Returns the root key of one of the seed's task streams."""
    return jax.random.fold_in(jax.random.key(seed), stream)


def task_key(root: jax.Array, step: jax.Array | int, index: jax.Array | int) -> jax.Array:
    """Key of task `index` (global index in the meta-batch) of meta-step `step`.

    Depending only on (root, step, global index) makes the meta-batch the same whatever
    the number of devices or processes, and makes resuming need no data-loader state.
    """
    return jax.random.fold_in(jax.random.fold_in(root, step), index)
