"""A config's learning problem: task family, network, per-task loss, metric and tasks."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import ml_collections

from maml_dist import algorithms, meta_test, tasks
from maml_dist.tasks.base import TaskFamily
from maml_dist.types import IMAGE_STREAM, TRAIN_STREAM, VALIDATION_STREAM, TaskBatch


@dataclasses.dataclass(frozen=True)
class Problem:
    """What the trainer, the evaluator and the benchmarks all build from a config.

    Attributes:
        family: the task distribution.
        model: the meta-learned network.
        loss_fn: `loss_fn(params, x, y)`, one task's loss (what is differentiated).
        score_fn: `score_fn(params, x, y)`, one task's reported metric (`family.metric`).
        loss_and_score_fn: `(params, x, y) -> (loss, metric)` from one forward pass.
        sample_fn: `key -> TaskBatch`, one training task (config.shots / num_query
            points), for families sampled on the device; None for host-sampled ones.
    """

    family: TaskFamily
    model: nn.Module
    loss_fn: algorithms.LossFn
    score_fn: algorithms.LossFn
    loss_and_score_fn: Callable
    sample_fn: Callable[[jax.Array], TaskBatch] | None

    @property
    def score_is_loss(self) -> bool:
        """Whether the reported metric is the loss itself (regression), not a separate one."""
        return self.family.kind == "regression"

    def fixed_tasks(
        self, seed: int, stream: int, num_tasks: int, shots: int, num_query: int
    ) -> TaskBatch:
        """A fixed set of tasks of one stream (step 0 of it), stacked on a leading axis.

        Host-sampled families draw training-stream tasks from the meta-training classes,
        validation and image tasks from the validation classes, and test tasks from the
        meta-test classes.
        """
        if not self.family.host_sampled:
            return meta_test.sample_tasks(self.family, seed, stream, num_tasks, shots, num_query)
        parts = {TRAIN_STREAM: "train", VALIDATION_STREAM: "validation", IMAGE_STREAM: "validation"}
        part = parts.get(stream, "test")
        sampler = self.family.episodes(part, shots, num_query)
        return sampler.batch(seed, stream, 0, range(num_tasks))


def make_problem(config: ml_collections.ConfigDict) -> Problem:
    """Builds the Problem of `config` (its `task`, `model`, `shots`, `num_query`)."""
    family = tasks.make_task_family(config)
    model = family.make_model()
    shots, num_query = config.shots, config.num_query

    def sample_fn(key):
        return family.sample(key, shots, num_query)

    return Problem(
        family,
        model,
        algorithms.make_loss_fn(model, family.loss),
        algorithms.make_loss_fn(model, family.score),
        algorithms.make_loss_and_score_fn(model, family.loss, family.score),
        None if family.host_sampled else sample_fn,
    )
