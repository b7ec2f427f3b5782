"""What every task family provides: the family interface."""

from __future__ import annotations

from typing import Protocol

import flax.linen as nn
import jax

from maml_dist.types import TaskBatch


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

    @classmethod
    def from_config(cls, config) -> TaskFamily:
        """Builds the family an ml_collections config describes (the registry's entry)."""
        ...

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
