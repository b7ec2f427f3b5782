"""What every task family provides: a batch layout and the family interface."""

from __future__ import annotations

from typing import Protocol

import flax.linen as nn
import jax
from flax import struct

# Disjoint key streams. Training, in-training validation and meta-testing draw their tasks
# from different streams of the seed, so meta-test tasks are never meta-training tasks.
TRAIN_STREAM = 0
VALIDATION_STREAM = 1
TEST_STREAM = 2
IMAGE_STREAM = 3  # the one task pictured in TensorBoard during training


@struct.dataclass
class TaskBatch:
    """Support and query sets of one task, or of a batch of tasks (leading axis)."""

    support_x: jax.Array
    support_y: jax.Array
    query_x: jax.Array
    query_y: jax.Array


class TaskFamily(Protocol):
    """A distribution over tasks, sampled by a pure function of a key.

    Attributes:
        name: the registry name.
        metric: what `score` measures, for reports ("mse", "accuracy").
        kind: "regression" or "classification" (selects the pictures drawn).
        host_sampled: False if `sample` draws tasks on the device from a key; True if
            tasks come from host data through `episodes(part, shots, queries)`, a sampler
            with `.batch(seed, stream, step, indices)` (see `maml_dist.data.episodes`).
    """

    name: str
    metric: str
    kind: str
    host_sampled: bool

    def sample(self, key: jax.Array, shots: int, num_query: int) -> TaskBatch:
        """Samples one task with `shots` support and `num_query` query points."""
        ...

    def make_model(self) -> nn.Module:
        """Returns the network that is meta-learned for this family."""
        ...

    def loss(self, predictions: jax.Array, targets: jax.Array) -> jax.Array:
        """Returns the scalar loss of one task's predictions."""
        ...

    def score(self, predictions: jax.Array, targets: jax.Array) -> jax.Array:
        """Returns the reported metric of one task's predictions."""
        ...

    def example_input(self) -> jax.Array:
        """Returns an input batch of the model's shape, for initialisation."""
        ...


def stream_key(seed: int, stream: int) -> jax.Array:
    """Returns the root key of one of the seed's task streams."""
    return jax.random.fold_in(jax.random.key(seed), stream)


def task_key(root: jax.Array, step: jax.Array | int, index: jax.Array | int) -> jax.Array:
    """Key of task `index` (global index in the meta-batch) of meta-step `step`.

    Depending only on (root, step, global index) makes the meta-batch the same whatever
    the number of devices or processes, and makes resuming need no data-loader state.
    """
    return jax.random.fold_in(jax.random.fold_in(root, step), index)
