"""A config's learning problem: task family, network, losses, algorithm and tasks."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from maml_dist import algorithms, meta_test, tasks
from maml_dist.data.device_episodes import DeviceEpisodes
from maml_dist.tasks.base import TaskFamily
from maml_dist.types import (
    IMAGE_STREAM,
    TEST_STREAM,
    TRAIN_STREAM,
    VALIDATION_STREAM,
    HeadSplit,
    LossFn,
    QueryFn,
    TaskBatch,
)


@dataclasses.dataclass(frozen=True)
class Problem:
    """What the trainer, the evaluator and the benchmarks all build from a config.

    Attributes:
        family: the task distribution.
        model: the meta-learned network.
        loss_fn: `loss_fn(params, x, y, step=0)`, one task's loss (what is
            differentiated) at meta-test; `step` (the parameters' inner updates) matters
            only to per-step batch norm.
        score_fn: `score_fn(params, x, y, step=0)`, one task's reported metric
            (`family.metric`).
        query_fn: `(params, x, y, step=0) -> (loss, {metric: value})` from one forward
            pass; no metric besides the loss when the metric is the loss (regression).
        algorithm: the meta-learning algorithm of `config.algorithm`.
        sample_fn: `(key, data) -> TaskBatch`, one training task (config.shots /
            num_query points) drawn on the device (`meta_objective.SampleFn`); None where the
            host feed draws them (`config.data_placement="host"`).
        device_episodes: for image episodes drawn on the device, what builds the `data`
            tables `sample_fn` reads (the trainer puts them on every device once); None
            for families that need no data (sinusoids) and for host-fed ones.
    """

    family: TaskFamily
    model: nn.Module
    loss_fn: algorithms.LossFn
    score_fn: algorithms.LossFn
    query_fn: QueryFn
    algorithm: algorithms.Algorithm
    sample_fn: Callable[[jax.Array, Any], TaskBatch] | None
    device_episodes: DeviceEpisodes | None = None

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
        if stream not in STREAM_PARTS:
            raise ValueError(f"stream must be one of {sorted(STREAM_PARTS)}, got {stream!r}")
        part = STREAM_PARTS[stream]
        sampler = self.family.episodes(part, shots, num_query)
        return sampler.batch(seed, stream, 0, range(num_tasks))


# The part of the class split each key stream draws from; no stream falls back to another.
STREAM_PARTS = {
    TRAIN_STREAM: "train",
    VALIDATION_STREAM: "validation",
    IMAGE_STREAM: "validation",
    TEST_STREAM: "test",
}


# MAML++'s switches, for configs written before MAML++ existed (which all ran MAML).
MAMLPP_DEFAULTS = {"msl": True, "msl_anneal_steps": -1, "lslr": True, "doa_steps": -1}
# What "-1" (auto) means for MAML++'s schedules, as fractions of num_steps: the paper's
# code anneals the multi-step loss over 10 of its 100 epochs (Omniglot configs) and its
# paper trains first order for the first 50 of 150 epochs.
MSL_ANNEAL_FRACTION = 0.1
DOA_FRACTION = 1 / 3


def mamlpp_settings(config: ml_collections.ConfigDict) -> dict:
    """MAML++'s switches of `config.mamlpp`, with "-1" schedules resolved against num_steps."""
    settings = {**MAMLPP_DEFAULTS, **config.get("mamlpp", {})}
    if settings["msl_anneal_steps"] < 0:
        settings["msl_anneal_steps"] = round(MSL_ANNEAL_FRACTION * config.num_steps)
    if settings["doa_steps"] < 0:
        settings["doa_steps"] = round(DOA_FRACTION * config.num_steps)
    return settings


# Where an image family's training episodes are drawn: "host" (numpy, in a feed thread,
# copied to the devices every chunk) or "device" (the part's images put on every device
# once, episodes drawn inside the scanned step). Configs written before the field drew on
# the host.
DATA_PLACEMENTS = ("host", "device")


def data_placement(config: ml_collections.ConfigDict) -> str:
    """`config.data_placement`, "host" for configs without one."""
    return config.get("data_placement", "host")


def inner_config(config: ml_collections.ConfigDict) -> algorithms.InnerConfig:
    """The algorithm settings of a config."""
    return algorithms.InnerConfig(
        lr=config.inner_lr,
        steps=config.inner_steps,
        first_order=config.first_order,
        remat=config.remat_inner,
        unroll=config.get("inner_unroll", algorithms.InnerConfig.unroll),
        imaml_lambda=config.imaml_lambda,
        cg_steps=config.cg_steps,
        line_search=config.imaml_line_search,
        **mamlpp_settings(config),
    )


def family_functions(family: TaskFamily, model: nn.Module) -> tuple[LossFn, LossFn, QueryFn]:
    """`(loss_fn, score_fn, query_fn)` of a family's network, each `(params, x, y) -> ...`.

    `query_fn` adds the family's metric to the loss, from one forward pass, unless the
    metric is the loss itself (regression).
    """
    loss_fn = algorithms.make_loss_fn(model, family.loss)
    score_fn = algorithms.make_loss_fn(model, family.score)
    regression = family.kind == "regression"
    query_fn = algorithms.make_query_fn(
        model, family.loss, {} if regression else {family.metric: family.score}
    )
    return loss_fn, score_fn, query_fn


def family_head_split(family: TaskFamily, model: nn.Module) -> HeadSplit | None:
    """The body/head split of a family's network (for ANIL), or None if it has none."""
    regression = family.kind == "regression"
    return algorithms.make_head_split(
        model, family.loss, {} if regression else {family.metric: family.score}
    )


def family_step_net(family: TaskFamily, model: nn.Module) -> algorithms.StepNet:
    """A family's network in meta-training mode (MAML++'s per-step batch norm)."""
    regression = family.kind == "regression"
    return algorithms.make_step_net(
        model, family.loss, {} if regression else {family.metric: family.score}
    )


def make_problem(config: ml_collections.ConfigDict) -> Problem:
    """Builds the Problem of `config` (`task`, `model`, `algorithm`, `shots`, `num_query`)."""
    family = tasks.make_task_family(config)
    model = family.make_model()
    shots, num_query = config.shots, config.num_query

    device_episodes = None
    if not family.host_sampled:

        def sample_fn(key, data=None):
            return family.sample(key, shots, num_query)
    elif data_placement(config) == "device":
        device_episodes = family.device_episodes("train", shots, num_query)
        sample_fn = device_episodes.sample
    else:
        sample_fn = None

    loss_fn, score_fn, query_fn = family_functions(family, model)
    return Problem(
        family=family,
        model=model,
        loss_fn=loss_fn,
        score_fn=score_fn,
        query_fn=query_fn,
        algorithm=algorithms.make_algorithm(
            config.algorithm,
            loss_fn,
            inner_config(config),
            query_fn,
            family_head_split(family, model),
            family_step_net(family, model),
        ),
        sample_fn=sample_fn,
        device_episodes=device_episodes,
    )
