"""Entry point: `python -m maml_dist.train --config=configs/<name>.py --workdir=DIR`."""

from __future__ import annotations

import logging as std_logging

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from maml_dist import checks, cli, trainer

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, config.json.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices",
    None,
    "Split the CPU into this many XLA devices (to try sharding without accelerators).",
    lower_bound=1,
)
flags.mark_flags_as_required(["config", "workdir"])
_PROG = "maml_dist.train"


class _QuietLibraries:
    """Drops INFO chatter of orbax (dozens of lines per save) from the progress log."""

    def filter(self, record) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
    """Starts JAX, then hands over to the trainer."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    if _CPU_DEVICES.value is not None:
        # Must precede the first backend use (DESIGN.md §5.4); importing jax is not one.
        jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)

    logging.info("JAX %s: %d device(s): %s", jax.__version__, jax.device_count(), jax.devices())
    try:
        trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except checks.UserInputError as e:
        cli.fail(_PROG, str(e))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.make_flags_parser(_PROG))
