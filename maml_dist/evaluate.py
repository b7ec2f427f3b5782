"""Entry point: `python -m maml_dist.evaluate --workdir=DIR [--step=N] ...`."""

from __future__ import annotations

import jax
from absl import app, flags

from maml_dist import cli, cpu_threads, eval_table, evaluator
from maml_dist.errors import UserInputError
from maml_dist.types import TEST_SEED

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by maml_dist.train.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: latest).")
_NUM_TASKS = flags.DEFINE_integer("num_tasks", 600, "Test tasks per K.")
_SHOTS = flags.DEFINE_list(
    "shots", None, "Support-set sizes K to test (default 5,10,20; classification: the run's K)."
)
_MAX_INNER = flags.DEFINE_integer("max_inner_steps", 10, "Report after 0..N inner steps.")
_TEST_SEED = flags.DEFINE_integer(
    "test_seed",
    TEST_SEED,
    "Seed of the test tasks; fixed by default, whatever the run's seed, so that runs are "
    "scored on the same tasks.",
)
_PROTOCOL = flags.DEFINE_enum(
    "protocol",
    "standard",
    evaluator.PROTOCOLS,
    "Query sets: standard (15 images per class; 100 points per regression task) or "
    "maml_code (K per class, as the original MAML code).",
)
_NUM_QUERY = flags.DEFINE_integer(
    "num_query", None, "Query points per test task, or per class (overrides --protocol)."
)
_RUNS = flags.DEFINE_string(
    "omniglot_runs",
    None,
    "Lake et al.'s one-shot runs (a folder or all_runs.zip): also report their error rates.",
)
_ALLOW_OVERLAP = flags.DEFINE_bool(
    "allow_overlap",
    False,
    "Score --omniglot_runs even if meta-training saw characters of their alphabets "
    "(results.json lists those alphabets).",
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
    try:
        # The run's thread pool: the same rounding as in training (maml_dist.cpu_threads).
        threads = cpu_threads.of_run(_WORKDIR.value)
    except UserInputError as e:
        cli.fail(_PROG, str(e))
    watch = cli.start_runtime(_PROG, cpu_threads=threads)
    try:
        shots = None if _SHOTS.value is None else tuple(int(s) for s in _SHOTS.value)
    except ValueError:
        cli.fail(_PROG, f"--shots must be integers, got {_SHOTS.value}; pass e.g. --shots=5,10,20")

    def run():
        report = evaluator.evaluate(
            _WORKDIR.value,
            step=_STEP.value,
            num_tasks=_NUM_TASKS.value,
            shots=shots,
            max_inner_steps=_MAX_INNER.value,
            test_seed=_TEST_SEED.value,
            num_query=_NUM_QUERY.value,
            omniglot_runs=_RUNS.value,
            data_dir=_DATA_DIR.value,
            protocol=_PROTOCOL.value,
            allow_overlap=_ALLOW_OVERLAP.value,
        )
        if jax.process_index() == 0:
            print(eval_table.format_table(report))

    cli.run_reporting_errors(_PROG, run, watch)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.make_flags_parser(_PROG))
