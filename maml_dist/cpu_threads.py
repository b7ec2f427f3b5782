"""The size of XLA's CPU thread pool: `config.cpu_threads`, set before JAX starts.

XLA runs a CPU program's operations on a pool of one thread per core, several at once
when they do not depend on each other. For a small model the hand-offs cost more than
they give: the sinusoid paper step (meta-batch 25, MLP 1-40-40-1) ran 172-175 us per
meta-step on one thread and 191-192 us on two of this 2-core machine, and the whole
70,000-step run took 14.6-14.9 s against 16.0-16.4 s, the second core left to compiles,
validations and checkpoints (README, "The trainer against a hand-written loop", version
0.8). A convolutional net needs the cores: the Omniglot 5-way 1-shot trainer ran 41
tasks/s on one thread, 58 on two. Hence a config field, 1 in configs/sinusoid.py and 0
(one thread per core) elsewhere.

The pool's size also changes the rounding of some products (Eigen splits them by
thread): the same seed gives other bits on 1 and on 2 threads, and with 0 on machines
with other core counts. A fixed count gives the same bits on any machine of the same
instruction set.

XLA reads the size once, from the environment variable PJRT_NPROC, when JAX starts its
CPU backend; the entry points call `apply` first thing. A program that has already run
JAX computations cannot change it.
"""

from __future__ import annotations

import json
import os

from maml_dist.errors import UserInputError

ENV = "PJRT_NPROC"  # read by XLA's CPU client (xla/pjrt/cpu/cpu_client.cc) at creation


def check(threads) -> int:
    """Returns `threads` if it is a valid `config.cpu_threads`.

    Raises:
        UserInputError: naming the value and what is allowed.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise UserInputError(
            f"config.cpu_threads must be an integer >= 0 (0: one thread per core), got "
            f"{threads!r}; pass e.g. --config.cpu_threads=1"
        )
    return threads


def _backends_started() -> bool:
    # Private, but what jax.distributed.initialize itself checks for the same reason.
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def apply(threads: int) -> bool:
    """Sizes XLA's CPU thread pool; call it before the first JAX computation.

    Args:
        threads: the pool's size; 0 leaves XLA's default (one per core, or $PJRT_NPROC
            where the user set it).

    Returns:
        Whether it set the size (False for 0).

    Raises:
        UserInputError: if `threads` is invalid, or JAX's backends have started already
            with another setting (the pool cannot be resized then).
    """
    if check(threads) == 0:
        return False
    if os.environ.get(ENV) == str(threads):
        return True
    if _backends_started():
        raise UserInputError(
            f"config.cpu_threads={threads} cannot take effect: JAX's CPU backend has "
            f"started already; call maml_dist.cpu_threads.apply({threads}) before the "
            f"first JAX computation, or set {ENV}={threads} in the environment"
        )
    os.environ[ENV] = str(threads)
    return True


def of_run(workdir: str) -> int:
    """The `cpu_threads` of the training run in `workdir`, for its evaluation.

    Returns:
        The saved config's value; 0 if it has none (older runs) or cannot be read here:
        the evaluator reads that file again and reports what is wrong with it.
    """
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return 0
    return saved.get("cpu_threads", 0) if isinstance(saved, dict) else 0
