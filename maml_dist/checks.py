"""Checks of user input that run before any compile, each failing with one clear sentence."""

from __future__ import annotations

import math
import os
import tempfile

import ml_collections

from maml_dist import algorithms, cpu_threads, models, nonfinite
from maml_dist.errors import UserInputError
from maml_dist.meta_objective import AUTO, BATCHINGS, REDUCTIONS
from maml_dist.problem import DATA_PLACEMENTS, MAMLPP_DEFAULTS
from maml_dist.state import SCHEDULES

__all__ = ["UserInputError", "check_meta_batch", "validate_config"]


_POSITIVE_INTS = (
    "num_steps",
    "meta_batch_size",
    "shots",
    "num_query",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "max_to_keep",
    "eval_tasks",
    "cg_steps",
)
_NON_NEGATIVE_INTS = ("inner_steps", "eval_inner_steps", "imaml_line_search")
_POSITIVE_FLOATS = ("inner_lr", "meta_lr", "imaml_lambda")
# Fields that only some configs have (a family's or a network's), checked when present.
_OPTIONAL_POSITIVE_INTS = (
    "host_chunk_steps",
    "host_workers",
    "ways",
    "nonfinite_max_skips",
    "model.filters",
    "model.blocks",
    "model.strides",
    "omniglot.num_train",
    "omniglot.image_size",
)
_OPTIONAL_NON_NEGATIVE_INTS = (
    "seed",
    "tasks_per_vmap",
    "inner_unroll",
    "omniglot.num_validation",
    "omniglot.split_seed",
    "omniglot.num_held_out",
    "omniglot.num_validation_alphabets",
    "image_folder.split_seed",
)
_NON_NEGATIVE_FLOATS = ("grad_clip_norm", "model.init_stddev")
# Steps and seeds end up in int32 arrays and numpy seed sequences.
_INT_LIMIT = 2**31 - 1


def _get(config: ml_collections.ConfigDict, name: str):
    """The value of field `a.b` of `config`, or None if it has no such field."""
    node = config
    for part in name.split("."):
        if not hasattr(node, "keys") or part not in node:
            return None
        node = node[part]
    return node


def _check_int(name: str, value, lowest: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserInputError(
            f"config.{name} must be an integer, got {value!r}; pass e.g. --config.{name}=10"
        )
    if not lowest <= value <= _INT_LIMIT:
        kind = "positive" if lowest else "non-negative"
        limit = f" of at most {_INT_LIMIT}" if value > _INT_LIMIT else ""
        raise UserInputError(
            f"config.{name} must be a {kind} integer{limit}, got {value}; "
            f"pass e.g. --config.{name}={max(lowest, 1)}"
        )


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks types and ranges of the common config fields, and of the optional ones present.

    Raises:
        UserInputError: naming the field, the bad value and what is allowed.
    """
    for name in _POSITIVE_INTS:
        _check_int(name, config[name], 1)
    for name in _NON_NEGATIVE_INTS:
        _check_int(name, config[name], 0)
    for names, lowest in ((_OPTIONAL_POSITIVE_INTS, 1), (_OPTIONAL_NON_NEGATIVE_INTS, 0)):
        for name in names:
            if _get(config, name) is not None:
                _check_int(name, _get(config, name), lowest)
    if "cpu_threads" in config:
        cpu_threads.check(config.cpu_threads)
    for name in _POSITIVE_FLOATS:
        value = config[name]
        if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise UserInputError(
                f"config.{name} must be a positive finite number, got {value!r}; "
                f"pass e.g. --config.{name}=0.001"
            )
    for name in _NON_NEGATIVE_FLOATS:
        value = _get(config, name)
        if value is not None and (
            not isinstance(value, int | float) or not math.isfinite(value) or value < 0
        ):
            raise UserInputError(
                f"config.{name} must be a finite number >= 0 (0 turns it off), got {value!r}; "
                f"pass e.g. --config.{name}=0"
            )
    choices = (
        ("algorithm", tuple(algorithms.REGISTRY)),
        ("task_batching", (*BATCHINGS, AUTO)),
        ("reduction", REDUCTIONS),
    )
    for name, allowed in choices:
        if config[name] not in allowed:
            raise UserInputError(
                f"config.{name} must be one of {', '.join(map(repr, allowed))}, got "
                f"{config[name]!r}; pass e.g. --config.{name}={allowed[0]}"
            )
    if _get(config, "tasks_per_vmap") and config.task_batching in ("loop", "unroll"):
        raise UserInputError(
            f"config.tasks_per_vmap={config.tasks_per_vmap} groups vmapped tasks, but "
            f"config.task_batching={config.task_batching!r} runs them one at a time; pass "
            f"--config.task_batching=vmap, or --config.tasks_per_vmap=0"
        )
    dtype = _get(config, "model.compute_dtype")
    if dtype is not None and dtype not in models.COMPUTE_DTYPES:
        raise UserInputError(
            f"config.model.compute_dtype must be 'float32' or 'bfloat16', got {dtype!r}; pass "
            f"--config.model.compute_dtype=float32 (the default) or "
            f"--config.model.compute_dtype=bfloat16 (float32 parameters and loss)"
        )
    mode = config.get("nonfinite", nonfinite.DEFAULT_MODE)
    if mode not in nonfinite.MODES:
        raise UserInputError(
            f"config.nonfinite must be 'stop' or 'skip', got {mode!r}; pass "
            f"--config.nonfinite=stop to stop at the first non-finite meta-step, or "
            f"--config.nonfinite=skip to skip such steps"
        )
    placement = config.get("data_placement", "host")
    if placement not in DATA_PLACEMENTS:
        raise UserInputError(
            f"config.data_placement must be 'host' or 'device', got {placement!r}; pass "
            f"--config.data_placement=device to draw episodes on the devices, or "
            f"--config.data_placement=host for the host feed"
        )
    _validate_mamlpp(config)
    _validate_learned_lr_scale(config)


def _validate_learned_lr_scale(config: ml_collections.ConfigDict) -> None:
    """Checks `learned_lr_scale`: positive, and other than 1 only where rates are learned."""
    scale = config.get("learned_lr_scale", 1.0)
    number = isinstance(scale, int | float) and not isinstance(scale, bool)
    if not number or not math.isfinite(scale) or scale <= 0:
        raise UserInputError(
            f"config.learned_lr_scale must be a positive finite number, got {scale!r}; "
            f"pass e.g. --config.learned_lr_scale=0.1"
        )
    lslr = {**MAMLPP_DEFAULTS, **config.get("mamlpp", {})}["lslr"]
    if scale != 1 and not algorithms.learns_rates(config.algorithm, lslr):
        raise UserInputError(
            f"config.learned_lr_scale={scale} scales the meta-updates of learned inner "
            f"rates, and algorithm {config.algorithm!r} learns none here; leave "
            f"--config.learned_lr_scale=1, or use --config.algorithm=metasgd (or mamlpp "
            f"with --config.mamlpp.lslr=True)"
        )


def check_fits_devices(nbytes: int, devices: list) -> None:
    """Checks that tables of `nbytes` take at most half of every device's memory.

    Backends without memory statistics (XLA:CPU: the tables are in host memory, which the
    data already occupies) pass.

    Raises:
        UserInputError: naming the sizes and the host feed as the fix.
    """
    for device in devices:
        stats = device.memory_stats() or {}
        limit = stats.get("bytes_limit")
        if limit and nbytes > limit // 2:
            raise UserInputError(
                f"the training images take {nbytes / 2**30:.2f} GiB, more than half of "
                f"{device.device_kind}'s {limit / 2**30:.2f} GiB; pass "
                f"--config.data_placement=host to feed episodes from the host instead"
            )


def _validate_mamlpp(config: ml_collections.ConfigDict) -> None:
    """Checks MAML++'s switches, the meta learning-rate schedule and the batch-norm rate."""
    schedule = config.get("meta_lr_schedule", "auto")
    if schedule not in ("auto", *SCHEDULES):
        raise UserInputError(
            f"config.meta_lr_schedule must be 'auto', 'constant' or 'cosine', got {schedule!r}; "
            f"pass e.g. --config.meta_lr_schedule=cosine"
        )
    floats = [("meta_lr_min", 1e-5)] + ([("bn_momentum", 0.1)] if "bn_momentum" in config else [])
    for name, example in floats:
        value = config.get(name, example)
        if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise UserInputError(
                f"config.{name} must be a positive finite number, got {value!r}; "
                f"pass e.g. --config.{name}={example}"
            )
    if config.get("meta_lr_min", 1e-5) > config.meta_lr:
        raise UserInputError(
            f"config.meta_lr_min={config.meta_lr_min} is above config.meta_lr={config.meta_lr}, "
            f"so the cosine schedule would raise the rate; pass a smaller --config.meta_lr_min"
        )
    if config.get("bn_momentum", 0.1) > 1:
        raise UserInputError(
            f"config.bn_momentum must be in (0, 1], got {config.bn_momentum}; "
            f"pass e.g. --config.bn_momentum=0.1"
        )
    for name, value in config.get("mamlpp", {}).items():
        if name not in MAMLPP_DEFAULTS:
            raise UserInputError(
                f"config.mamlpp has no field {name!r}; its fields are {', '.join(MAMLPP_DEFAULTS)}"
            )
        if isinstance(MAMLPP_DEFAULTS[name], bool):
            if not isinstance(value, bool):
                raise UserInputError(
                    f"config.mamlpp.{name} must be True or False, got {value!r}; "
                    f"pass e.g. --config.mamlpp.{name}=False"
                )
        elif isinstance(value, bool) or not isinstance(value, int) or value < -1:
            raise UserInputError(
                f"config.mamlpp.{name} must be a meta-step count >= 0, or -1 for the default "
                f"fraction of num_steps, got {value!r}; pass e.g. --config.mamlpp.{name}=100"
            )


def check_meta_batch(meta_batch_size: int, num_devices: int, pad: bool) -> None:
    """Checks that the meta-batch can be split over the devices.

    Raises:
        UserInputError: if it does not divide and padding is off; the message lists the
            nearest sizes that work and the padding switch.
    """
    if pad or meta_batch_size % num_devices == 0:
        return
    below = (meta_batch_size // num_devices) * num_devices
    above = below + num_devices
    options = " or ".join(str(s) for s in (below, above) if s > 0)
    raise UserInputError(
        f"config.meta_batch_size={meta_batch_size} does not divide by the {num_devices} "
        f"devices; use a multiple of {num_devices} (e.g. {options}) or pass "
        f"--config.pad_meta_batch=True to pad with masked tasks"
    )


def check_tasks_per_vmap(tasks_per_vmap: int, per_device: int) -> None:
    """Checks that `tasks_per_vmap` splits each device's `per_device` tasks into equal groups.

    Equal groups keep the meta-batch's loss one gradient per group (`meta_objective.fuses_task_sum`)
    and compile one group shape; 0, or at least `per_device`, runs all of them at once.

    Raises:
        UserInputError: naming the device's task count and the group sizes that divide it.
    """
    if tasks_per_vmap <= 0 or tasks_per_vmap >= per_device or per_device % tasks_per_vmap == 0:
        return
    divisors = [d for d in range(1, per_device) if per_device % d == 0]
    below = max(d for d in divisors if d < tasks_per_vmap)
    above = [d for d in divisors if d > tasks_per_vmap][:1] or [per_device]
    raise UserInputError(
        f"config.tasks_per_vmap={tasks_per_vmap} does not divide the {per_device} tasks each "
        f"device runs per meta-step; pass a divisor of {per_device} (e.g. "
        f"--config.tasks_per_vmap={below} or {above[0]}), or 0 for all at once"
    )


def check_workdir_writable(workdir: str) -> None:
    """Creates `workdir` if needed and checks that files can be written in it.

    Raises:
        UserInputError: if it cannot be created or written.
    """
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserInputError(
            f"workdir {workdir!r} is a file, not a folder; pass a --workdir that is a folder "
            f"or does not exist yet"
        )
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test"):
            pass
    except OSError as e:
        raise UserInputError(
            f"workdir {workdir!r} is not writable ({e.strerror}); pass a --workdir you can write to"
        ) from None
