"""Entry point: `python -m maml_dist.train --config=configs/<name>.py --workdir=DIR`."""

from __future__ import annotations

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from maml_dist import cli, trainer

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, config.json.")
cli.define_runtime_flags()
flags.mark_flags_as_required(["config", "workdir"])
_PROG = "maml_dist.train"


def main(argv):
    """Starts JAX, then hands over to the trainer."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Before the first backend use (README trap 4).
    watch = cli.start_runtime(_PROG, cpu_threads=_CONFIG.value.get("cpu_threads", 0))

    logging.info(
        "JAX %s, process %d of %d: %d device(s) in all, %d here.",
        jax.__version__,
        jax.process_index(),
        jax.process_count(),
        jax.device_count(),
        jax.local_device_count(),
    )
    cli.run_reporting_errors(
        _PROG, lambda: trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value), watch
    )
    cli.skip_exit_collection()


if __name__ == "__main__":
    app.run(main, flags_parser=cli.make_flags_parser(_PROG))
