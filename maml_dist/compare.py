"""Entry point: `python -m maml_dist.compare DIR DIR [...] [--out FILE.png]`.

Prints one table of the runs (the config fields that differ, then the meta-test metric after
1 and after the last inner step, with 95% CIs) and writes one figure of their adaptation
curves. Runs must have been meta-tested alike (`python -m maml_dist.evaluate` with the same
seed, tasks, shots, queries and steps); otherwise it says which field differs and exits 2.
"""

from __future__ import annotations

from absl import app, flags

from maml_dist import cli, comparison

_OUT = flags.DEFINE_string(
    "out", None, "Write the figure here (default: comparison.png in the current folder)."
)
_PROG = "maml_dist.compare"


def main(argv):
    """Reads the runs, checks them, prints the table and writes the figure."""
    workdirs = argv[1:]

    def run():
        runs = [comparison.load_run(w) for w in workdirs]
        comparison.check_comparable(runs)
        print(comparison.table(runs))
        out = _OUT.value or "comparison.png"
        comparison.save_figure(out, runs)
        print(f"figure: {out}")

    cli.run_reporting_errors(_PROG, run)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.make_flags_parser(_PROG))
