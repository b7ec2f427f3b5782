"""Trains and meta-tests a config per algorithm and seed through the CLI; prints the table.

    python scripts/compare_algorithms.py [--config=configs/sinusoid.py]
        [--algorithms=maml,metasgd] [--seeds=0,1,2] [--root=runs] [--name=paper]
        [--json=FILE] [--table=FILE] [extra train flags...]

Each (algorithm, seed) runs `python -m maml_dist.train` then `python -m maml_dist.evaluate`
as a user would, in workdir ROOT/NAME_ALGORITHM_sSEED; the wall time is that of the whole
training process. Extra flags go to every training run; per-algorithm ones can be given as
`--ALGORITHM.config.FIELD=VALUE` (e.g. `--reptile.config.inner_steps=5`). The table has
the query metric after 1 and after the last inner step for every K the evaluator reports.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(command: list[str]) -> None:
    """Runs `command` quietly; on failure prints the end of its output and exits with its code.

    The children's logs are long, so they are kept out of the table's output, but a failed
    run's own words (a non-finite stop, a bad flag) must reach the user.
    """
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        print("\n".join(tail), file=sys.stderr)
        sys.exit(f"failed (exit {done.returncode}): {' '.join(command)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/sinusoid.py")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--root", default="runs")
    parser.add_argument("--name", default="paper")
    parser.add_argument("--algorithms", default="maml")
    parser.add_argument("--json", help="write the rows here too")
    parser.add_argument("--table", help="only print the table of a JSON file written before")
    args, extra = parser.parse_known_args()
    if args.table:
        print_table(json.loads(pathlib.Path(args.table).read_text()))
        return

    rows = []
    for algorithm, seed in (
        (a, int(s)) for a in args.algorithms.split(",") for s in args.seeds.split(",")
    ):
        mine = [f"--{f.split('.', 1)[1]}" for f in extra if f.startswith(f"--{algorithm}.")]
        common = [
            f for f in extra if not any(f.startswith(f"--{a}.") for a in args.algorithms.split(","))
        ]
        workdir = ROOT / args.root / f"{args.name}_{algorithm}_s{seed}"
        if (workdir / "checkpoints").exists():
            sys.exit(f"{workdir} already holds a run; remove it or pass another --name")
        t0 = time.perf_counter()
        _run(
            [
                sys.executable,
                "-m",
                "maml_dist.train",
                f"--config={args.config}",
                f"--workdir={workdir}",
                f"--config.seed={seed}",
                f"--config.algorithm={algorithm}",
                *common,
                *mine,
            ]
        )
        wall = time.perf_counter() - t0
        _run([sys.executable, "-m", "maml_dist.evaluate", f"--workdir={workdir}"])
        report = json.loads((workdir / "eval" / "results.json").read_text())
        rows.append(
            {
                "algorithm": algorithm,
                "seed": seed,
                "flags": common + mine,
                "train_wall_s": wall,
                "results": report["results"],
            }
        )
        print(f"{algorithm} seed {seed}: {wall:.1f} s", file=sys.stderr, flush=True)
        if args.json:  # after every run, so a failure later loses nothing
            pathlib.Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    """docs/algorithms.md's table: the query metric after 1 and the last step, every K."""
    first = rows[0]["results"]
    last = first[0]["inner_steps"][-1]
    columns = [(r["shots"], s) for r in first for s in (1, last)]
    print(
        "| algorithm | seed | train wall time | "
        + " | ".join(f"K={k}, {s} step{'s' * (s > 1)}" for k, s in columns)
        + " |"
    )
    print("|---|---:|---:|" + "---:|" * len(columns))
    for row in rows:
        by_k = {r["shots"]: r for r in row["results"]}
        cells = [_cell(by_k[k], s) for k, s in columns]
        print(
            f"| {row['algorithm']} | {row['seed']} | {row['train_wall_s']:.1f} s | "
            + " | ".join(cells)
            + " |"
        )


def _cell(result: dict, step: int) -> str:
    """Mean ± CI; with the median beside it when some task's loss is not finite."""
    mean, ci, median = result["mean"][step], result["ci95"][step], result["median"][step]
    bad = result["nonfinite"][step]
    if mean is None or bad:
        med = "not finite" if median is None else f"{median:.3f}"
        return f"median {med} ({bad} tasks not finite)"
    return f"{mean:.3f} ± {ci:.3f}"


if __name__ == "__main__":
    main()
