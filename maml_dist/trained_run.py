"""A trained run from its workdir: the resolved config it saved, and its meta-parameters."""

from __future__ import annotations

import json
import os
import time

import ml_collections
from absl import logging

from maml_dist import checks, parallel, recovery, resume_checks
from maml_dist import state as state_lib
from maml_dist.checkpointing import Checkpointer, has_checkpoint
from maml_dist.problem import make_problem


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a training run wrote to `workdir/config.json`.

    Raises:
        checks.UserInputError: if the workdir holds no trained run.
    """
    path = os.path.join(workdir, "config.json")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.exists(path) or not has_checkpoint(ckpt_dir):
        raise checks.UserInputError(
            f"no checkpoint in {ckpt_dir!r}; train first with "
            f"`python -m maml_dist.train --config=configs/sinusoid.py --workdir={workdir}`"
        )
    with open(path) as f:
        saved = json.load(f)
    resume_checks.check_run_format(saved, workdir)
    return ml_collections.ConfigDict(saved)


def restore_params(config: ml_collections.ConfigDict, workdir: str, step: int | None, problem=None):
    """Restores the meta-parameters of checkpoint `step` (default: the newest that restores).

    `problem` is the config's `Problem` if the caller has built it already.

    Returns:
        (meta_params, step).
    """
    problem = problem or make_problem(config)
    tx, _ = state_lib.make_meta_optimizer(config)
    target = state_lib.abstract_state(
        problem.model,
        problem.family.example_input(),
        tx,
        config.seed,
        problem.algorithm,
        parallel.replicated(parallel.make_mesh()),
    )
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=1, create=False)
    try:
        started = time.perf_counter()
        logging.info(
            "restoring the checkpoint at step %s...", ckpt.latest_step() if step is None else step
        )
        if step is None:
            # Damaged checkpoints are passed over but left in place: evaluation only reads.
            state, step, damaged = recovery.restore_newest(ckpt, target)
            for d in damaged:
                logging.warning(
                    "the checkpoint at step %d cannot be restored (%s); evaluating step %d",
                    d.step,
                    d.error,
                    step,
                )
        else:
            state = recovery.restore_step(ckpt, step, target)
        logging.info("restored step %d in %.1f s", step, time.perf_counter() - started)
    finally:
        ckpt.close()
    return state.meta_params, step
