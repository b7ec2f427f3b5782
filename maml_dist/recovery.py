"""Restoring past damaged checkpoints, with the same decision on every process.

A checkpoint is damaged when it cannot be restored: a truncated or missing file, unreadable
metadata (a host died mid-write, a disk filled). The newest checkpoint that restores is
used instead; which ones were passed over is returned, so the caller can say so and, in
training, set them aside. Every process tries the same steps in the same order and they
agree after each try (one tiny all-gather), so a checkpoint one process cannot read is
passed over by all.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from maml_dist.checkpointing import Checkpointer
from maml_dist.errors import UserInputError


@dataclasses.dataclass(frozen=True)
class Damaged:
    """A checkpoint that did not restore: its step and the error, in one line."""

    step: int
    error: str


def describe(error: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, cut to `limit` characters (orbax's run long)."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _everyone(ok: bool) -> bool:
    """Whether `ok` holds on every process (a collective: all processes must call it)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def try_restore(ckpt: Checkpointer, step: int, target):
    """Restores `step` into `target` if every process can.

    Returns:
        (the state, None), or (None, the error in one line).
    """
    try:
        state, error = ckpt.restore(step, target), None
    except Exception as e:  # orbax and tensorstore raise many types for damaged files
        state, error = None, describe(e)
    if not _everyone(error is None):
        return None, error or "another process could not restore it"
    return state, None


def restore_newest(ckpt: Checkpointer, target):
    """Restores the newest checkpoint that restores.

    Returns:
        (state, step, damaged): the restored state and its step (None, None when the
        folder holds no checkpoint) and the newer checkpoints that did not restore,
        newest first.

    Raises:
        UserInputError: if there are checkpoints but none restores; nothing is moved then,
            since a failure of all of them points at the environment more than at the files.
    """
    damaged = []
    for step in reversed(ckpt.all_steps()):
        state, error = try_restore(ckpt, step, target)
        if error is None:
            return state, step, damaged
        damaged.append(Damaged(step, error))
    if damaged:
        steps = ", ".join(str(d.step) for d in damaged)
        raise UserInputError(
            f"no checkpoint in {ckpt.directory!r} can be restored (tried steps {steps}; "
            f"step {damaged[0].step}: {damaged[0].error}); put back intact copies of those "
            f"step folders, or move them out of the folder to start the run from scratch"
        )
    return None, None, damaged


def restore_step(ckpt: Checkpointer, step: int, target):
    """Restores checkpoint `step`, which the user asked for by number.

    Raises:
        UserInputError: if there is no such step (naming those there are) or it does not
            restore.
    """
    steps = ckpt.all_steps()
    if step not in steps:
        raise UserInputError(
            f"no checkpoint at step {step} in {ckpt.directory!r}; available steps: {steps}; "
            f"pass one of them with --step"
        )
    state, error = try_restore(ckpt, step, target)
    if error is not None:
        others = ", ".join(str(s) for s in steps if s != step) or "none"
        raise UserInputError(
            f"the checkpoint at step {step} in {ckpt.directory!r} cannot be restored "
            f"({error}); pass another --step (steps there: {others}), or none for the "
            f"newest one that restores"
        )
    return state


def resume(ckpt: Checkpointer, state):
    """The training state to resume from: the newest checkpoint that restores, else `state`.

    Newer checkpoints that do not restore are set aside under `checkpoints/damaged/`, one
    warning line each: kept for the user to inspect, out of the way of the steps that
    will be saved again and of `max_to_keep`'s garbage collection.
    """
    latest = ckpt.latest_step()
    if latest is None:
        return state
    started = time.perf_counter()
    logging.info("restoring the checkpoint at step %d...", latest)
    restored, step, damaged = restore_newest(ckpt, state)
    for d in damaged:
        path = ckpt.set_aside(d.step)
        logging.warning(
            "the checkpoint at step %d cannot be restored (%s); moved it to %s and resuming "
            "from step %d",
            d.step,
            d.error,
            path,
            step,
        )
    logging.info("resumed from step %d in %.1f s", step, time.perf_counter() - started)
    return restored
