"""JAX's persistent compilation cache: where it lives, and turning it on.

XLA compiles the trainer's scanned meta-step, evaluation and meta-test functions at
every start; with the cache on, a resumed (or repeated) run loads them from disk instead.
JAX keys each entry by the program, the compiler flags, the devices and the versions, so
a stale entry is never used; the cache is trusted code, so it lives in the user's own
cache folder, never a shared one.
"""

from __future__ import annotations

import os

OFF = "off"
# Compilations shorter than this are not written: loading from disk is not much faster.
MIN_COMPILE_SECONDS = 0.2


def default_dir() -> str:
    """`$XDG_CACHE_HOME/maml_dist/jax`, or `~/.cache/maml_dist/jax`."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "maml_dist", "jax")


def resolve(flag: str | None) -> str | None:
    """The cache folder for the `--compile_cache` flag's value, or None when off.

    Args:
        flag: a folder, "off", or None for the default: `JAX_COMPILATION_CACHE_DIR` when
            the user set it (JAX then reads it itself), else `default_dir()`.
    """
    if flag == OFF:
        return None
    if flag:
        return os.path.abspath(os.path.expanduser(flag))
    return os.environ.get("JAX_COMPILATION_CACHE_DIR") or default_dir()


def enable(folder: str | None) -> None:
    """Points JAX's persistent cache at `folder` (None: leaves it off).

    Must run before the first compilation of the process.
    """
    import jax

    if folder is None:
        jax.config.update("jax_compilation_cache_dir", None)
        return
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
