"""orbax CheckpointManager wrapper: async periodic saves, restore into a sharded target."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from maml_dist import storage

DAMAGED = "damaged"  # <checkpoints>/damaged/<step>: checkpoints set aside, never deleted


class Checkpointer:
    """Saves and restores the TrainState under `<workdir>/checkpoints`.

    Every process must call every method: orbax coordinates the processes (README trap 6).

    Saves are asynchronous, so a write that fails (a full disk, no permission) surfaces
    at the next `save`, `wait_until_finished` or `close`; there it raises
    `storage.WriteError` naming the step whose write failed. orbax writes each step into
    `<step>.orbax-checkpoint-tmp` and renames it only once complete, so the failed step is
    never listed and the earlier steps are untouched (`finished_steps`).
    """

    def __init__(self, directory: str, max_to_keep: int, create: bool = True):
        """Opens (and, if `create`, makes) the checkpoint directory."""
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=create, enable_async_checkpointing=True
        )
        # Naming the handler lets a step whose item folder is gone fail as "not found"
        # instead of leaving the manager unable to restore any other step.
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
        )
        self._writing: int | None = None  # the step of the save in flight
        self._closed = False

    def latest_step(self) -> int | None:
        """The newest finished checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of all kept checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def finished_steps(self) -> list[int]:
        """Steps of the finished checkpoints on disk, oldest first.

        Read from the folder, not from orbax's list, which after a failed save may lack
        steps that are still on disk (those it meant to garbage-collect).
        """
        if not os.path.isdir(self.directory):
            return []
        names = os.listdir(self.directory)
        return sorted(int(n) for n in names if n.isdigit())

    def save(self, step: int, state, force: bool = False) -> None:
        """Starts an asynchronous save of `state` as checkpoint `step`.

        Raises:
            storage.WriteError: if the previous save or the start of this one failed.
        """
        self.wait_until_finished()
        self._writing = step
        with self._reporting(step):
            self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def restore(self, step: int, target):
        """Restores checkpoint `step` with the structure, dtypes and shardings of `target`.

        Reads on this process only, with no barrier: orbax's own restore ends with one, and
        a process that failed to read would skip it while the others wait there. Callers
        that must agree across processes do so afterwards (`maml_dist.recovery`).

        Fields of a dataclass `target` that the checkpoint predates (written by an older
        version) come back as zeros, e.g. `TrainState.skipped_steps`.

        Args:
            step: which checkpoint.
            target: a pytree of arrays or `jax.ShapeDtypeStruct`s with shardings; restoring
                into it keeps optax states as their own types rather than lists, and places
                every array as the current topology wants it (whatever wrote the checkpoint).

        Raises:
            Exception: whatever orbax or tensorstore raise for a damaged checkpoint.
        """
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target
        )
        path = epath.Path(self.directory) / str(step) / ocp.checkpoint_manager.DEFAULT_ITEM_NAME
        handler = ocp.StandardCheckpointHandler()
        try:
            with quiet_closed_loop():
                if not dataclasses.is_dataclass(abstract):
                    return handler.restore(path, args=ocp.args.StandardRestore(abstract))
                saved = set(handler.metadata(path).keys())
                fields = {f.name: getattr(abstract, f.name) for f in dataclasses.fields(abstract)}
                present = {k: v for k, v in fields.items() if k in saved}
                restored = handler.restore(path, args=ocp.args.StandardRestore(present))
        finally:
            handler.close()
        missing = {k: _zeros(v) for k, v in fields.items() if k not in saved}
        return dataclasses.replace(abstract, **restored, **missing)

    def set_aside(self, step: int) -> str:
        """Moves checkpoint `step` to `<checkpoints>/damaged/<step>`, out of orbax's reach.

        There it is neither restored again nor garbage-collected by `max_to_keep`, and the
        step can be saved anew. Process 0 moves it; every process must call this.

        Returns:
            The new path (suffixed `.2`, `.3`, ... if that step was set aside before).
        """
        self._manager.wait_until_finished()
        # Every process names the same folder only if none looks after process 0 moved it.
        _sync_processes(f"maml_dist before setting aside {step}")
        folder = os.path.join(self.directory, DAMAGED)
        path = os.path.join(folder, str(step))
        n = 1
        while os.path.exists(path):
            n += 1
            path = os.path.join(folder, f"{step}.{n}")
        if jax.process_index() == 0:
            os.makedirs(folder, exist_ok=True)
            os.replace(os.path.join(self.directory, str(step)), path)
        _sync_processes(f"maml_dist after setting aside {step}")
        self._manager.reload()
        return path

    def wait_until_finished(self) -> None:
        """Waits for pending asynchronous saves.

        Raises:
            storage.WriteError: if the save in flight failed (reported once).
        """
        with self._reporting(self._writing):
            self._manager.wait_until_finished()
        self._writing = None

    def close(self) -> None:
        """Waits for pending saves, then releases the manager; closing twice is a no-op.

        Raises:
            storage.WriteError: if the save in flight failed; the manager is released.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self.wait_until_finished()
        finally:
            self._manager.close()

    @contextlib.contextmanager
    def _reporting(self, step: int | None):
        """Turns orbax's report of a failed write of `step` into `storage.WriteError`.

        tensorstore reports the OS error inside a ValueError ("... File too large
        [os_error_code='27']"), orbax's own file operations as OSError. Any other error
        is not a storage failure and goes on as it is.
        """
        try:
            yield
        except Exception as e:
            self._writing = None  # orbax reports a failed save once
            if not storage.is_storage_error(e):
                raise
            where = self.directory if step is None else os.path.join(self.directory, str(step))
            what = "a checkpoint" if step is None else f"checkpoint {step}"
            raise storage.WriteError(what, where, e) from e


def _sync_processes(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _zeros(abstract: jax.ShapeDtypeStruct) -> jax.Array:
    return jax.device_put(np.zeros(abstract.shape, abstract.dtype), abstract.sharding)


@contextlib.contextmanager
def quiet_closed_loop():
    """A context that drops the "Event loop is closed" reports of tensorstore callbacks.

    A read or write that fails leaves callbacks that fire into orbax's finished event
    loop; Python prints each as an unraisable exception, dozens of tracebacks for one
    damaged or unwritable file. They can fire after the call has returned its error, so
    once one has failed the filter stays for the rest of the process (it drops that one
    report and nothing else).
    """
    previous = sys.unraisablehook

    def hook(unraisable):
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    sys.unraisablehook = hook
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        if not failed:
            sys.unraisablehook = previous


def has_checkpoint(directory: str) -> bool:
    """Whether `directory` holds at least one finished checkpoint (no directory created)."""
    if not os.path.isdir(directory):
        return False
    manager = ocp.CheckpointManager(
        os.path.abspath(directory), options=ocp.CheckpointManagerOptions(create=False)
    )
    try:
        return manager.latest_step() is not None
    finally:
        manager.close()
