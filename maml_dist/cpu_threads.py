"""The size of XLA's CPU thread pool: `config.cpu_threads`, set before JAX starts.

XLA runs a CPU program's operations on a pool of one thread per core, several at once
when they do not depend on each other. For a small model the hand-offs cost more than
they give: the sinusoid paper step (meta-batch 25, MLP 1-40-40-1) ran 172-175 us per
meta-step on one thread and 191-192 us on two of this 2-core machine, and the other core
is left to compiles, validations and checkpoints (docs/benchmarks.md, "The trainer against a
hand-written loop", version 0.8). A convolutional net needs the cores: the Omniglot
5-way 1-shot trainer ran 41 tasks/s on one thread, 58 on two. Hence a config field, 1 in
configs/sinusoid.py and 0 (XLA's default, one thread per core) elsewhere.

The pool's size also changes the rounding of some products (Eigen splits them by
thread): the same seed gives other bits on 1 and on 2 threads, and with 0 on machines
with other core counts. A fixed count gives the same bits on any machine of the same
instruction set, with at most that many fake CPU devices (`--cpu_devices`): XLA makes at
least one thread per device.

XLA reads the size once, from the environment variable PJRT_NPROC (else NPROC), when JAX
starts its CPU backend (`DefaultThreadPoolSize` in xla/pjrt/utils.cc); no XLA flag sets
it. The entry points call `apply` first thing, and so does `trainer.train_and_evaluate`,
which warns instead where the caller's JAX has started already. Accelerator clients read
the same variable for their host threads, so it is applied to CPU-only runs only.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import pkgutil

from absl import logging

from maml_dist.errors import UserInputError

ENV = "PJRT_NPROC"
# XLA's CPU client caps its Eigen pool at 256 threads.
MAX_THREADS = 256
# The environment's value when this module was first imported: before JAX started, in
# every entry point, so a value that matches it is the one the pool was made with.
_ENV_AT_IMPORT = os.environ.get(ENV)
_applied: int | None = None  # what `apply` set before the backend started
_told = False  # whether `apply` said it leaves the pool to an accelerator run


def check(threads, where: str = "config.cpu_threads", fix: str = "--config.cpu_threads=1") -> int:
    """Returns `threads` if it is a valid `config.cpu_threads`.

    Args:
        threads: the value.
        where: what holds it, for the message.
        fix: what to pass instead, for the message.

    Raises:
        UserInputError: naming the value and what is allowed.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= MAX_THREADS:
        raise UserInputError(
            f"{where} must be an integer from 0 to {MAX_THREADS} (0: one thread per core), "
            f"got {threads!r}; pass e.g. {fix}"
        )
    return threads


def _backends_started() -> bool:
    # Private, but what jax.distributed.initialize itself checks for the same reason.
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def accelerators() -> str | None:
    """What beside the CPU JAX could start here, or None for CPU-only runs.

    `$JAX_PLATFORMS` (or `jax_platforms`) decides where set; otherwise any installed PJRT
    plugin (CUDA, ROCm, ...) or libtpu counts, as JAX would start it.
    """
    import jax

    platforms = os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms
    if platforms:
        others = [p.strip() for p in platforms.split(",") if p.strip() not in ("", "cpu")]
        return ", ".join(others) or None
    found = [ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")]
    if importlib.util.find_spec("jax_plugins") is not None:
        import jax_plugins

        found += [m.name for m in pkgutil.iter_modules(jax_plugins.__path__)]
    if importlib.util.find_spec("libtpu") is not None:
        found.append("libtpu")
    return ", ".join(sorted(set(found))) or None


def apply(threads: int, strict: bool = True) -> bool:
    """Sizes XLA's CPU thread pool; call it before the first JAX computation.

    Args:
        threads: the pool's size; 0 leaves XLA's default (one per core, or $PJRT_NPROC
            where the user set it).
        strict: raise, rather than warn, if JAX's backends started already with another
            size.

    Returns:
        Whether the pool has `threads` threads (False for 0, or where it is not applied).

    Raises:
        UserInputError: if `threads` is invalid, or (with `strict`) JAX's backends have
            started already with another setting (the pool cannot be resized then).
    """
    global _applied, _told
    if check(threads) == 0:
        return False
    others = accelerators()
    if others is not None:
        if not _told:  # once: the entry point and the trainer both ask
            logging.info(
                "config.cpu_threads=%d is not applied: JAX may start %s here, whose host "
                "threads the same setting would size; it sizes CPU-only runs "
                "(JAX_PLATFORMS=cpu)",
                threads,
                others,
            )
            _told = True
        return False
    started = _backends_started()
    # The variable's value the pool was (or will be) made with.
    current = _ENV_AT_IMPORT if started else os.environ.get(ENV)
    if threads == _applied or current == str(threads):
        return True
    if started:
        message = (
            f"config.cpu_threads={threads} cannot take effect: JAX's CPU backend has "
            f"started already; call maml_dist.cpu_threads.apply({threads}) before the "
            f"first JAX computation, or set {ENV}={threads} in the environment"
        )
        if strict:
            raise UserInputError(message)
        logging.warning("%s (the run goes on with the pool JAX started with)", message)
        return False
    if os.environ.get(ENV) not in (None, str(threads)):
        logging.info("config.cpu_threads=%d replaces %s=%s", threads, ENV, os.environ[ENV])
    os.environ[ENV] = str(threads)
    _applied = threads
    return True


def of_run(workdir: str) -> int:
    """The `cpu_threads` of the training run in `workdir`, for its evaluation.

    Returns:
        The saved config's value; 0 if it has none (older runs) or cannot be read here:
        the evaluator reads that file again and reports what is wrong with it.

    Raises:
        UserInputError: if the saved value is not a valid `cpu_threads`.
    """
    path = os.path.join(workdir, "config.json")
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return 0
    if not isinstance(saved, dict) or "cpu_threads" not in saved:
        return 0
    return check(saved["cpu_threads"], f"cpu_threads in {path}", "0 there (one per core)")
