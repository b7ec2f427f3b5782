"""The notebook API: a config dataclass and pure functions, no workdir or command line.

    learner = make_learner(MetaConfig(algorithm="maml"), Sinusoid())
    state = learner.init()
    step = jax.jit(learner.meta_step)
    for _ in range(1000):
        state, metrics = step(state)

`learner.meta_step` is the trainer's own sharded meta-step (over every device of every
process by default), so what a notebook measures is what `maml_dist.train` runs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np
import optax

from maml_dist import algorithms, meta_objective, meta_test, meta_update, parallel
from maml_dist import state as state_lib
from maml_dist.errors import UserInputError
from maml_dist.nonfinite import NonFiniteError
from maml_dist.problem import family_functions, family_head_split, family_step_net
from maml_dist.tasks.base import TaskFamily
from maml_dist.types import TEST_SEED, TEST_STREAM, LossFn, QueryFn, TaskBatch


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """What a meta-learning run needs besides its task family and network.

    Attributes:
        algorithm: a name of `maml_dist.algorithms.REGISTRY`.
        inner: the algorithm's settings (inner learning rate, steps, ...).
        meta_batch_size: tasks per meta-step.
        shots: support points (regression) or images per class (classification).
        num_query: query points, or query images per class.
        meta_lr: Adam's learning rate on the meta-parameters.
        bn_momentum: the running statistics' moving-average rate, for networks with
            per-step batch norm (MAML++).
        seed: initialisation and task-stream seed.
        tasks_per_vmap: where a device's tasks are vmapped (regression; classification on
            accelerators), run them in groups of this many, one after another: memory
            of a group, not of the meta-batch (README, "Sharding"). 0, or at least a
            device's task count, runs them all at once; a group that does not divide
            them leaves a smaller last one (one more compiled shape, and a gradient per
            task instead of one per group).
        learned_lr_scale: the meta-optimiser's updates of learned inner rates (Meta-SGD's;
            MAML++'s with `inner.lslr`) times this, after `tx` (docs/algorithms.md, "MAML++
            with five inner steps"); 1 leaves them as the weights'.
    """

    algorithm: str = "maml"
    inner: algorithms.InnerConfig = dataclasses.field(default_factory=algorithms.InnerConfig)
    meta_batch_size: int = 25
    shots: int = 10
    num_query: int = 10
    meta_lr: float = 1e-3
    bn_momentum: float = 0.1
    seed: int = 0
    tasks_per_vmap: int = 0
    learned_lr_scale: float = 1.0


class Learner(NamedTuple):
    """Everything built from a MetaConfig: pure functions and the pieces they close over.

    Attributes:
        config: the MetaConfig.
        family: the task family.
        model: the network.
        loss_fn: `(params, x, y) -> loss`.
        score_fn: `(params, x, y) -> metric` (the family's reported metric).
        query_fn: `(params, x, y) -> (loss, metrics)`.
        algorithm: the algorithm (`adapt`, `task_grad`, ...).
        tx: the optax meta-optimiser.
        init: `() -> TrainState`, the initial meta-parameters and optimiser state.
        meta_step: `(state[, tasks]) -> (state, metrics)`; `tasks` for host-sampled families.
        run: `(state, n) -> (state, metrics of each step)`: n meta-steps in one jitted
            `lax.scan` (the state is donated); raises `NonFiniteError` if one of them was
            not finite. None for host-sampled families, which pass their tasks to
            `meta_step`.
        adapt: jitted `algorithm.adapt`: `(meta_params, x, y, num_steps) -> params`.
    """

    config: MetaConfig
    family: TaskFamily
    model: nn.Module
    loss_fn: LossFn
    score_fn: LossFn
    query_fn: QueryFn
    algorithm: algorithms.Algorithm
    tx: optax.GradientTransformation
    init: Callable[[], state_lib.TrainState]
    meta_step: Callable[..., tuple[state_lib.TrainState, dict]]
    run: Callable[[state_lib.TrainState, int], tuple[state_lib.TrainState, dict]] | None
    adapt: Callable[..., Any]


def make_learner(
    config: MetaConfig,
    family: TaskFamily,
    model: nn.Module | None = None,
    tx: optax.GradientTransformation | None = None,
    devices: list | None = None,
) -> Learner:
    """Builds the algorithm, optimiser and sharded meta-step of `config` for `family`.

    Args:
        config: the run's settings.
        family: the task distribution (e.g. `Sinusoid()`).
        model: the network; default `family.make_model()`.
        tx: the meta-optimiser; default `optax.adam(config.meta_lr)`. The learned rates'
            updates are scaled after it (`config.learned_lr_scale`). With per-step
            batch norm, it gets the learned meta-parameters and a moving average the
            running statistics (`state.with_running_average`).
        devices: devices the meta-batch is split over; default every device.

    Returns:
        A Learner.

    Raises:
        UserInputError: for a `tasks_per_vmap` that is not an integer >= 0, or a
            `learned_lr_scale` that is not positive or, other than 1, has no learned rates
            to scale.
    """
    _check(config)
    model = model or family.make_model()
    tx = state_lib.scale_learned_rates(tx or optax.adam(config.meta_lr), config.learned_lr_scale)
    loss_fn, score_fn, query_fn = family_functions(family, model)
    step_net = family_step_net(family, model)
    if step_net.running:
        tx = state_lib.with_running_average(tx, config.bn_momentum)
    algorithm = algorithms.make_algorithm(
        config.algorithm,
        loss_fn,
        config.inner,
        query_fn,
        family_head_split(family, model),
        step_net,
    )
    mesh = parallel.make_mesh(devices)
    replicated = parallel.replicated(mesh)

    def sample_fn(key, data=None):
        return family.sample(key, config.shots, config.num_query)

    spec = meta_objective.MetaBatch(
        algorithm=algorithm,
        query_fn=query_fn,
        sample_fn=None if family.host_sampled else sample_fn,
        meta_batch_size=config.meta_batch_size,
        seed=config.seed,
        batching=meta_objective.resolve_batching("vmap" if family.kind == "regression" else "auto"),
        tasks_per_vmap=config.tasks_per_vmap,
    )
    meta_step = meta_update.make_train_step(parallel.make_meta_grad_fn(spec, mesh), tx)

    def init() -> state_lib.TrainState:
        return state_lib.init_state(
            model, family.example_input(), tx, config.seed, algorithm, replicated
        )

    run = None if family.host_sampled else _stopping(meta_update.make_multi_step(meta_step))
    return Learner(
        config=config,
        family=family,
        model=model,
        loss_fn=loss_fn,
        score_fn=score_fn,
        query_fn=query_fn,
        algorithm=algorithm,
        tx=tx,
        init=init,
        meta_step=meta_step,
        run=run,
        # Built once: a jit wrapper made per call would trace and compile every call.
        adapt=jax.jit(algorithm.adapt, static_argnums=3),
    )


def _check(config: MetaConfig) -> None:
    """Refuses the MetaConfig fields the meta-step cannot take, in one sentence each."""
    per_vmap = config.tasks_per_vmap
    if isinstance(per_vmap, bool) or not isinstance(per_vmap, int) or per_vmap < 0:
        raise UserInputError(
            f"MetaConfig.tasks_per_vmap must be an integer >= 0 (0: a device's tasks all at "
            f"once), got {per_vmap!r}"
        )
    scale = config.learned_lr_scale
    number = isinstance(scale, int | float) and not isinstance(scale, bool)
    if not number or not math.isfinite(scale) or scale <= 0:
        raise UserInputError(
            f"MetaConfig.learned_lr_scale must be a positive finite number, got {scale!r}"
        )
    if scale != 1 and not algorithms.learns_rates(config.algorithm, config.inner.lslr):
        raise UserInputError(
            f"MetaConfig.learned_lr_scale={scale} scales the meta-updates of learned inner "
            f"rates, and algorithm {config.algorithm!r} learns none here; leave it at 1, or "
            f"use algorithm='metasgd' (or 'mamlpp' with InnerConfig(lslr=True))"
        )


def _stopping(run: Callable) -> Callable:
    """`run`, raising `NonFiniteError` once a meta-step was not finite.

    The meta-step never applies such a step, and after it leaves the state unchanged
    (`nonfinite.guard`), so a loop that only printed the loss would go on training
    nothing. One scalar is read per call, after its steps.
    """

    def checked(state: state_lib.TrainState, num_steps: int):
        state, metrics = run(state, num_steps)
        if int(state.nonfinite_in_row):
            # The guard counts the non-finite step in `step`, then freezes the state: `step`
            # is that step's number, counted from 1.
            step = int(state.step)
            raise NonFiniteError(
                f"the meta-loss, meta-gradient or update of meta-step {step} is not "
                f"finite; the error's .state holds the meta-parameters from before it and "
                f".metrics the call's (to go on from them, pass "
                f".state.replace(nonfinite_in_row=0) to learner.run); lower "
                f"MetaConfig.meta_lr or InnerConfig.lr, or for learned rates "
                f"MetaConfig.learned_lr_scale",
                state,
                metrics,
            )
        return state, metrics

    return checked


def sample_tasks(
    learner: Learner,
    num_tasks: int,
    shots: int | None = None,
    num_query: int | None = None,
    stream: int = TEST_STREAM,
    seed: int | None = None,
) -> TaskBatch:
    """A fixed set of tasks of the learner's family (device-sampled families only).

    `seed` defaults to the fixed test seed for the test stream (the tasks
    `maml_dist.evaluate` scores), and to the learner's seed for any other stream.
    """
    c = learner.config
    if seed is None:
        seed = TEST_SEED if stream == TEST_STREAM else c.seed
    return meta_test.sample_tasks(
        learner.family,
        seed,
        stream,
        num_tasks,
        c.shots if shots is None else shots,
        c.num_query if num_query is None else num_query,
    )


def evaluate(
    learner: Learner, meta_params: Any, tasks: TaskBatch, num_steps: int = 10
) -> dict[str, np.ndarray]:
    """Mean and 95% CI of the query metric after 0..num_steps inner steps on `tasks`.

    Returns:
        `{"mean": (num_steps + 1,), "ci95": (num_steps + 1,), "per_task": (tasks, steps + 1)}`.
    """
    # learner.score_fn is one object per learner, so the compiled curves are reused.
    curves = meta_test.adaptation_curves(
        learner.algorithm, meta_params, tasks, num_steps, (learner.score_fn,)
    )[..., 0]
    mean, ci = meta_test.mean_and_ci95(curves)
    return {"mean": mean, "ci95": ci, "per_task": curves}


def adapt(learner: Learner, meta_params: Any, task: TaskBatch, num_steps: int):
    """The network's parameters after `num_steps` inner steps on one task's support set."""
    return learner.adapt(meta_params, task.support_x, task.support_y, num_steps)
