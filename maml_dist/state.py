"""Training state and its construction."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct


@struct.dataclass
class TrainState:
    """Everything a meta-training run needs to continue exactly where it stopped.

    No RNG is kept: the tasks of step s are a pure function of (seed, s, task index), so
    `step` alone fixes the data stream on resume.

    Attributes:
        step: number of meta-updates applied so far (int32 scalar).
        meta_params: what the algorithm meta-learns: `{"params": theta_0, ...}`.
        opt_state: the meta-optimiser's state.
    """

    step: jax.Array
    meta_params: Any
    opt_state: Any


def make_meta_optimizer(
    config: ml_collections.ConfigDict,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adam on the meta-gradient, optionally after global-norm clipping.

    Returns:
        (transform, schedule): the optax transform and its learning-rate schedule, which the
        trainer logs.
    """
    schedule = optax.constant_schedule(config.meta_lr)
    adam = optax.adam(schedule)
    if config.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adam), schedule
    return adam, schedule


def create_train_state(
    model, example_input: jax.Array, tx: optax.GradientTransformation, seed: int, algorithm
) -> TrainState:
    """Initialises the meta-parameters from `seed` and the optimiser state (traceable)."""
    params = model.init(jax.random.key(seed), example_input)["params"]
    meta_params = algorithm.init(params)
    return TrainState(
        step=jnp.zeros((), jnp.int32), meta_params=meta_params, opt_state=tx.init(meta_params)
    )


def init_state(model, example_input, tx, seed: int, algorithm, sharding) -> TrainState:
    """A fresh TrainState placed with `sharding` (initialised on device, in one jit)."""
    return jax.jit(
        lambda: create_train_state(model, example_input, tx, seed, algorithm),
        out_shardings=sharding,
    )()


def abstract_state(model, example_input, tx, seed: int, algorithm, sharding) -> TrainState:
    """Shapes, dtypes and `sharding` of the TrainState, without computing it (for restore)."""
    shapes = jax.eval_shape(lambda: create_train_state(model, example_input, tx, seed, algorithm))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)
