"""Non-finite meta-steps: the on-device guard of each update and the host's stop rule.

A meta-step is non-finite when its meta-loss, its meta-gradient or what the optimiser
would make of them (the new meta-parameters and optimiser state) holds an inf or a NaN.
Such an update is never applied: the guard keeps the previous meta-parameters and
optimiser state, inside the jitted step, so no host round trip is needed per step. The
run's mode sets how many such steps in a row it tolerates (`limit`); once that many
happened, the state stops changing and the host, which reads each finished chunk's
metrics anyway, stops the run with `NonFiniteError`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from maml_dist import algorithms
from maml_dist.errors import RunStoppedError
from maml_dist.state import TrainState

MODES = ("stop", "skip")
DEFAULT_MODE = "stop"
DEFAULT_MAX_SKIPS = 10


def limit(config: ml_collections.ConfigDict) -> int:
    """Non-finite meta-steps in a row that stop the run.

    1 for "stop"; `nonfinite_max_skips` for "skip". Configs older than the fields stop.
    """
    if config.get("nonfinite", DEFAULT_MODE) == "stop":
        return 1
    return config.get("nonfinite_max_skips", DEFAULT_MAX_SKIPS)


def all_finite(tree) -> jax.Array:
    """Whether every floating-point leaf of `tree` is finite (a boolean scalar)."""
    groups: dict = {}
    for x in jax.tree.leaves(tree):
        if jnp.issubdtype(x.dtype, jnp.inexact):
            groups.setdefault(jnp.dtype(x.dtype), []).append(jnp.ravel(x))
    # One reduction over all leaves of a dtype, concatenated (XLA fuses the concatenation
    # into it): one small kernel per leaf cost the sinusoid step a sixth of its time. Never
    # a norm, whose square could overflow to inf for finite but large values.
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(jnp.concatenate(g))) for g in groups.values()]))


def guard(old: TrainState, new: TrainState, finite: jax.Array, max_in_row: int) -> TrainState:
    """The state after a meta-step: `new` if `finite`, else `old` with the skip counted.

    Pure and traceable. Once `old` has `max_in_row` non-finite steps in a row the run is
    over: the state no longer changes (not even `step`), so a chunk dispatched before the
    host noticed leaves it as it was.

    Args:
        old: the state before the step.
        new: the state the update would give (`skipped_steps` and `nonfinite_in_row` are
            ignored).
        finite: whether the step's meta-loss, meta-gradient and update are all finite.
        max_in_row: `limit` of the run.
    """
    halted = old.nonfinite_in_row >= max_in_row
    apply = jnp.logical_and(finite, jnp.logical_not(halted))
    skipped = jnp.logical_and(jnp.logical_not(finite), jnp.logical_not(halted))

    def pick(a, b):
        # A select, not arithmetic: a finite step's values pass through bit for bit.
        return jnp.where(apply, b, a)

    return TrainState(
        step=jnp.where(halted, old.step, new.step),
        meta_params=jax.tree.map(pick, old.meta_params, new.meta_params),
        opt_state=jax.tree.map(pick, old.opt_state, new.opt_state),
        skipped_steps=old.skipped_steps + skipped.astype(jnp.int32),
        nonfinite_in_row=jnp.where(
            halted,
            old.nonfinite_in_row,
            jnp.where(finite, 0, old.nonfinite_in_row + 1).astype(jnp.int32),
        ),
    )


def _retrain(config: ml_collections.ConfigDict) -> str:
    """The advice to retrain, naming the rates' meta-step where the run learns rates."""
    lslr = config.get("mamlpp", {}).get("lslr", True)
    scale = (
        " (or, for its learned rates, --config.learned_lr_scale)"
        if algorithms.learns_rates(config.algorithm, lslr)
        else ""
    )
    return f"retrain in a new --workdir with a lower --config.meta_lr or --config.inner_lr{scale}"


class NonFiniteError(RunStoppedError):
    """The run met more non-finite meta-steps in a row than its mode allows.

    Attributes:
        state: from the Python API's `learner.run`, the state it stopped with (the last
            finite meta-step's); None from the trainer, whose checkpoints hold that.
        metrics: from `learner.run`, that call's metrics of each step; else None.
    """

    def __init__(self, message: str, state=None, metrics=None):
        super().__init__(message)
        self.state, self.metrics = state, metrics


def check_chunk(metrics: dict, start: int, config: ml_collections.ConfigDict):
    """Reads a finished chunk's counters (one small fetch per chunk, none per step).

    Args:
        metrics: the chunk's metrics (stacked over its steps), with `skipped_steps` and
            `nonfinite_in_row`.
        start: the step the chunk started from.
        config: the run's config.

    Returns:
        (the run's skipped steps so far, the step that stopped the run or None).
    """
    in_row, skipped = jax.device_get((metrics["nonfinite_in_row"], metrics["skipped_steps"]))
    halted = np.flatnonzero(np.asarray(in_row) >= limit(config))
    # Steps are counted from 1 in logs and checkpoints: the chunk's i-th step is start + i + 1.
    return int(np.asarray(skipped)[-1]), (start + int(halted[0]) + 1 if halted.size else None)


def stop_message(
    config: ml_collections.ConfigDict, step: int, checkpoint: int | None, directory: str
) -> str:
    """The one line that ends a run stopped at `step`; `checkpoint` is its newest one."""
    max_in_row = limit(config)
    if max_in_row == 1:
        what = f"the meta-loss, meta-gradient or update of step {step} is not finite"
        resume = "pass --config.nonfinite=skip to skip such steps"
    else:
        what = (
            f"{max_in_row} meta-steps in a row (steps {step - max_in_row + 1}-{step}) had a "
            f"non-finite meta-loss, meta-gradient or update (config.nonfinite_max_skips)"
        )
        resume = "raise --config.nonfinite_max_skips"
    retrain = _retrain(config)
    if checkpoint is None:
        return f"{what}, before any checkpoint was written; {retrain}"
    return (
        f"{what}; the last good checkpoint is step {checkpoint} in {directory!r} (every "
        f"checkpoint holds finite values): resume from it with the same --workdir and "
        f"{resume}, or {retrain}"
    )


def check_resumed(
    config: ml_collections.ConfigDict, step: int, in_row: int, directory: str
) -> None:
    """Stops a run resumed inside a streak of skipped steps as long as its limit or longer.

    A checkpoint saved in the middle of such a streak (under "skip") carries its length,
    and a resume with a lower `nonfinite_max_skips` (or "stop") would halt at once,
    before running a step; this names the streak instead of a step never run.

    Args:
        config: the resumed run's config.
        step: the restored checkpoint's step.
        in_row: its `nonfinite_in_row`.
        directory: the checkpoints' folder.

    Raises:
        NonFiniteError: if `in_row` reaches the run's limit.
    """
    max_in_row = limit(config)
    if in_row < max_in_row:
        return
    allowed = "stops at the first" if max_in_row == 1 else f"stops after {max_in_row} in a row"
    raise NonFiniteError(
        f"the checkpoint of step {step} in {directory!r} was saved after {in_row} "
        f"non-finite meta-steps in a row (steps {step - in_row + 1}-{step}), and this run "
        f"{allowed} (config.nonfinite, config.nonfinite_max_skips); resume it with "
        f"--config.nonfinite=skip --config.nonfinite_max_skips={in_row + 1} or more, or "
        f"{_retrain(config)}"
    )


class Watch:
    """The host's side of the guard: warns of skipped steps, stops a halted run.

    Args:
        config: the run's config.
        ckpt: the run's `Checkpointer`, to name the last good checkpoint.
        skipped: the skipped steps of the state the run resumed from.
    """

    def __init__(self, config: ml_collections.ConfigDict, ckpt, skipped: int):
        self.config, self.ckpt, self.skipped = config, ckpt, skipped
        self.checked_to = 0

    def check(self, start: int, end: int, metrics) -> None:
        """Reads the chunk `start`-`end` (once).

        Raises:
            NonFiniteError: if the run stopped in it.
        """
        if end <= self.checked_to:
            return
        self.checked_to = end
        skipped, stopped_at = check_chunk(metrics, start, self.config)
        if stopped_at is not None:
            self.ckpt.wait_until_finished()
            raise NonFiniteError(
                stop_message(self.config, stopped_at, self.ckpt.latest_step(), self.ckpt.directory)
            )
        if skipped > self.skipped:
            logging.warning(
                "skipped %d meta-step(s) with non-finite values in steps %d-%d (%d in all)",
                skipped - self.skipped,
                start + 1,
                end,
                skipped,
            )
        self.skipped = skipped
