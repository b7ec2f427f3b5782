"""A training run's user-input checks, all of them before any compile or write."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
from absl import logging

from maml_dist import checks, meta_objective, recorded_split, resume_checks
from maml_dist.problem import Problem, make_problem


def check_inputs(
    config: ml_collections.ConfigDict, workdir: str, num_devices: int
) -> tuple[Problem, dict | None]:
    """All user-input checks, before any compile or any write to the workdir's run files.

    Returns:
        The config's Problem (with its data read, for host-sampled families), and the
        class split's record for `DIR/split.json` (None for families without classes).

    Raises:
        checks.UserInputError: with one sentence naming the problem and the fix.
    """
    checks.validate_config(config)
    problem = make_problem(config)  # unknown task names fail here
    if problem.family.host_sampled:
        # Reads the data and builds the samplers, so a bad split or a data set too small
        # for the episodes fails here rather than after the workdir is written.
        for part in ("train", "validation"):
            problem.family.episodes(part, config.shots, config.num_query)
    if problem.device_episodes is not None:
        checks.check_fits_devices(problem.device_episodes.tables.nbytes, jax.local_devices())
    record = None
    if problem.family.kind == "classification":
        record = problem.family.split_record()
        recorded_split.check(
            workdir,
            record,
            config.data_dir,
            "pass the data this run was trained on (--config.data_dir), or start a new --workdir",
        )
    checks.check_meta_batch(config.meta_batch_size, num_devices, config.pad_meta_batch)
    per_vmap = config.get("tasks_per_vmap", 0)
    if meta_objective.resolve_batching(config.task_batching) == "vmap":
        checks.check_tasks_per_vmap(
            per_vmap, meta_objective.TaskLayout(config.meta_batch_size, num_devices).per_device
        )
    elif per_vmap:
        # Only "auto" gets here (validate_config refuses loop/unroll with groups): a config
        # written for accelerators, run where tasks go one at a time anyway.
        logging.warning(
            "config.tasks_per_vmap=%d has no effect on %s: task_batching 'auto' runs a "
            "device's tasks one at a time there",
            per_vmap,
            jax.default_backend(),
        )
    checks.check_workdir_writable(workdir)
    saved = os.path.join(workdir, "config.json")
    if os.path.exists(saved):
        with open(saved) as f:
            saved_config = json.load(f)
        resume_checks.check_run_format(saved_config, workdir)
        resume_checks.check_resume_compatible(saved_config, config)
    return problem, record
