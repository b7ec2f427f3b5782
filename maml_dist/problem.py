"""A config's learning problem: task family, network, per-task loss and task sampler."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import ml_collections

from maml_dist import algorithms, tasks
from maml_dist.tasks.base import TaskBatch, TaskFamily


@dataclasses.dataclass(frozen=True)
class Problem:
    """What the trainer, the evaluator and the benchmarks all build from a config.

    Attributes:
        family: the task distribution.
        model: the meta-learned network.
        loss_fn: `loss_fn(params, x, y)`, one task's loss.
        sample_fn: `key -> TaskBatch`, one training task (config.shots / num_query points).
    """

    family: TaskFamily
    model: nn.Module
    loss_fn: algorithms.LossFn
    sample_fn: Callable[[jax.Array], TaskBatch]


def make_problem(config: ml_collections.ConfigDict) -> Problem:
    """Builds the Problem of `config` (its `task`, `model`, `shots`, `num_query`)."""
    family = tasks.make_task_family(config)
    model = family.make_model()
    shots, num_query = config.shots, config.num_query

    def sample_fn(key):
        return family.sample(key, shots, num_query)

    return Problem(family, model, algorithms.make_loss_fn(model, family.loss), sample_fn)
