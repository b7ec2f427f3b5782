"""Entry point: `python -m maml_dist.evaluate --workdir=DIR [--step=N] ...`."""

from __future__ import annotations

import jax
from absl import app, flags

from maml_dist import cli, evaluator

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by maml_dist.train.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: latest).")
_NUM_TASKS = flags.DEFINE_integer("num_tasks", 600, "Test tasks per K.")
_SHOTS = flags.DEFINE_list(
    "shots", None, "Support-set sizes K to test (default 5,10,20; classification: the run's K)."
)
_MAX_INNER = flags.DEFINE_integer("max_inner_steps", 10, "Report after 0..N inner steps.")
_SEED = flags.DEFINE_integer("seed", None, "Seed of the test tasks (default: the run's seed).")
_NUM_QUERY = flags.DEFINE_integer(
    "num_query", None, "Query points per test task (default 100), or per class (default 15)."
)
_RUNS = flags.DEFINE_string(
    "omniglot_runs",
    None,
    "Lake et al.'s one-shot runs (a folder or all_runs.zip): also report their error rates.",
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Where the run's data set is now (default: where training read it)."
)
cli.define_runtime_flags()
flags.mark_flag_as_required("workdir")
_PROG = "maml_dist.evaluate"


def main(argv):
    """Restores, meta-tests, prints the table and writes DIR/eval/."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    watch = cli.start_runtime(_PROG)
    try:
        shots = None if _SHOTS.value is None else tuple(int(s) for s in _SHOTS.value)
    except ValueError:
        cli.fail(_PROG, f"--shots must be integers, got {_SHOTS.value}; pass e.g. --shots=5,10,20")

    def run():
        report = evaluator.evaluate(
            _WORKDIR.value,
            _STEP.value,
            _NUM_TASKS.value,
            shots,
            _MAX_INNER.value,
            _SEED.value,
            _NUM_QUERY.value,
            _RUNS.value,
            _DATA_DIR.value,
        )
        if jax.process_index() == 0:
            print(evaluator.format_table(report))

    cli.run_reporting_errors(_PROG, run, watch)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.make_flags_parser(_PROG))
