"""orbax CheckpointManager wrapper: async periodic saves, restore into a sharded target."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores the TrainState under `<workdir>/checkpoints`.

    Every process must call every method: orbax coordinates the processes (README trap 6).
    """

    def __init__(self, directory: str, max_to_keep: int, create: bool = True):
        """Opens (and, if `create`, makes) the checkpoint directory."""
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=create, enable_async_checkpointing=True
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest finished checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of all kept checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state, force: bool = False) -> None:
        """Starts an asynchronous save of `state` as checkpoint `step`."""
        self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def restore(self, step: int, target):
        """Restores checkpoint `step` with the structure, dtypes and shardings of `target`.

        Args:
            step: which checkpoint.
            target: a pytree of arrays or `jax.ShapeDtypeStruct`s with shardings; restoring
                into it keeps optax states as their own types rather than lists, and places
                every array as the current topology wants it (whatever wrote the checkpoint).
        """
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target
        )
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        """Waits for pending saves, then releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


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
