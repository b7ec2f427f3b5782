"""Training state and its construction."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from maml_dist import models, norms, xla_options
from maml_dist.types import RATES


@struct.dataclass
class TrainState:
    """Everything a meta-training run needs to continue exactly where it stopped.

    No RNG is kept: the tasks of step s are a pure function of (seed, s, task index), so
    `step` alone fixes the data stream on resume.

    Attributes:
        step: number of meta-steps taken so far, skipped ones included (int32 scalar).
        meta_params: what the algorithm meta-learns: `{"params": theta_0, ...}`.
        opt_state: the meta-optimiser's state.
        skipped_steps: meta-steps whose update was not applied because a value was not
            finite (int32 scalar; `maml_dist.nonfinite`).
        nonfinite_in_row: how many of the latest meta-steps in a row were not finite (int32
            scalar); once it reaches the run's limit the state no longer changes.
    """

    step: jax.Array
    meta_params: Any
    opt_state: Any
    skipped_steps: jax.Array
    nonfinite_in_row: jax.Array


SCHEDULES = ("constant", "cosine")


def resolve_schedule(config: ml_collections.ConfigDict) -> str:
    """The meta learning-rate schedule of `config`, "auto" resolved.

    "auto" (and runs older than the field) is "cosine" for MAML++ and "constant" (MAML's)
    for every other algorithm.
    """
    name = config.get("meta_lr_schedule", "auto")
    if name != "auto":
        return name
    return "cosine" if config.algorithm == "mamlpp" else "constant"


def resolve_bn_mode(config: ml_collections.ConfigDict) -> str:
    """The batch-norm mode of the config's network ("transductive" where it has no field)."""
    model = config.get("model", {})
    return models.resolve_bn_mode(
        model.get("bn_mode", "transductive"),
        config.algorithm,
        model.get("mamlpp_bn_mode", models.OLD_MAMLPP_BN_MODE),
    )


def meta_lr_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """The meta learning rate: constant, or cosine-annealed (MAML++).

    The cosine schedule goes from `meta_lr` at step 0 to `meta_lr_min` at `num_steps`.
    """
    if resolve_schedule(config) == "constant":
        return optax.constant_schedule(config.meta_lr)
    return optax.cosine_decay_schedule(
        config.meta_lr, config.num_steps, alpha=config.meta_lr_min / config.meta_lr
    )


def is_running_stat(path) -> bool:
    """Whether a meta-parameter path leads to a per-step batch norm's running statistic.

    Only those under "params"; LSLR's rates for them, under "inner_lr", are learned leaves.
    """
    keys = [getattr(k, "key", None) for k in path]
    return len(keys) > 1 and keys[0] == "params" and keys[-1] in norms.RUNNING_STATS


def learned(tree):
    """`tree` with the running statistics' entries zeroed: what gradient norms measure."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.zeros_like(x) if is_running_stat(path) else x, tree
    )


def running_average(momentum: float) -> optax.GradientTransformation:
    """Turns batch statistics into an exponential moving average of them.

    The "gradient" of a running statistic is the meta-batch's mean batch statistic `s`
    (`maml_dist.algorithms.mamlpp`); the update `momentum * (s - p)` makes the new value
    `(1 - momentum) * p + momentum * s`.
    """

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        return jax.tree.map(lambda s, p: momentum * (s - p), updates, params), state

    return optax.GradientTransformation(init, update)


def with_running_average(
    tx: optax.GradientTransformation, momentum: float
) -> optax.GradientTransformation:
    """`tx` on the learned meta-parameters, `running_average` on the running statistics."""

    def labels(meta_params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "running" if is_running_stat(path) else "learned", meta_params
        )

    return optax.multi_transform({"learned": tx, "running": running_average(momentum)}, labels)


def scale_learned_rates(tx: optax.GradientTransformation, scale: float):
    """`tx` with its updates of the learned inner rates (`meta_params[RATES]`) times `scale`.

    Adam moves each meta-parameter by about its learning rate per step, whatever the
    gradient's size: at a meta learning rate of 1e-3 an inner rate that starts at 0.01
    moves by a tenth of itself per meta-step, where the weights move by a thousandth of
    theirs (docs/algorithms.md, "MAML++ with five inner steps"). `scale` sets the rates' step apart.

    Args:
        tx: the meta-optimiser.
        scale: the factor; 1 returns `tx` itself, so runs that leave it at 1 keep the
            optimiser state (and checkpoints) of runs older than the option.

    Returns:
        The transform; its updates of every other meta-parameter are `tx`'s.
    """
    if scale == 1:
        return tx

    def filled(tree, value: bool):
        return jax.tree.map(lambda _: value, tree)

    def rates(meta_params):
        return {key: filled(tree, key == RATES) for key, tree in meta_params.items()}

    return optax.chain(tx, optax.masked(optax.scale(scale), rates))


def make_meta_optimizer(
    config: ml_collections.ConfigDict,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adam on the meta-gradient, optionally after global-norm clipping.

    Learned inner rates' updates are scaled by `config.learned_lr_scale` (1 where the
    config predates it; `scale_learned_rates`). With per-step batch norm, the running
    statistics get `running_average` instead (`config.bn_momentum`), outside the clipping.

    Returns:
        (transform, schedule): the optax transform and its learning-rate schedule, which the
        trainer logs.
    """
    schedule = meta_lr_schedule(config)
    tx = scale_learned_rates(optax.adam(schedule), config.get("learned_lr_scale", 1.0))
    if config.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
    if resolve_bn_mode(config) == "per_step_running":
        tx = with_running_average(tx, config.bn_momentum)
    return tx, schedule


def create_train_state(
    model, example_input: jax.Array, tx: optax.GradientTransformation, seed: int, algorithm
) -> TrainState:
    """Initialises the meta-parameters from `seed` and the optimiser state (traceable)."""
    params = model.init(jax.random.key(seed), example_input)["params"]
    meta_params = algorithm.init(params)
    zero = jnp.zeros((), jnp.int32)
    return TrainState(
        step=zero,
        meta_params=meta_params,
        opt_state=tx.init(meta_params),
        skipped_steps=zero,
        nonfinite_in_row=zero,
    )


def init_state(model, example_input, tx, seed: int, algorithm, sharding) -> TrainState:
    """A fresh TrainState placed with `sharding` (initialised on device, in one jit)."""
    return jax.jit(
        lambda: create_train_state(model, example_input, tx, seed, algorithm),
        out_shardings=sharding,
        compiler_options=xla_options.compiler_options(next(iter(sharding.device_set)).platform),
    )()


def abstract_state(model, example_input, tx, seed: int, algorithm, sharding) -> TrainState:
    """Shapes, dtypes and `sharding` of the TrainState, without computing it (for restore)."""
    shapes = jax.eval_shape(lambda: create_train_state(model, example_input, tx, seed, algorithm))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)
