"""MAML++ ablation: MAML, each MAML++ change added to it alone, then all five.

    python scripts/ablate_mamlpp.py --config=configs/omniglot_minimal_20w1s.py \
        [--variants=maml,msl,lslr,bn,cosine,doa,mamlpp] [--root=runs] [--name=ablate] \
        [--num_tasks=200] [--json=FILE] [--table=FILE] [extra train flags...]

Each variant runs `python -m maml_dist.train` then `python -m maml_dist.evaluate` as a user
would, in workdir ROOT/NAME_VARIANT; the wall time is that of the whole training process.
The extra flags (e.g. `--config.num_steps=200`) go to every training run. The table has
the held-out query metric after 1 inner step, after the training count and after the
last step the evaluator reports, with 95% confidence intervals.

`--variants=mamlpp_transductive` runs MAML++'s other four changes on MAML's transductive
batch norm, the evaluation protocol of the MAML row; `bn_support` and `mamlpp_support` are
`bn` and `mamlpp` with per-step batch norm normalising with the support set's statistics
(`per_step_support`) instead of running ones; `lslr_bn_support` is the learned rates and
`per_step_support` batch norm together, without the other three.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Every variant names all five switches, so none depends on the "auto" defaults.
_OFF = {
    "mamlpp.msl": False,
    "mamlpp.lslr": False,
    "mamlpp.doa_steps": 0,
    "meta_lr_schedule": "constant",
    "model.bn_mode": "transductive",
}
VARIANTS = {
    "maml": {"algorithm": "maml", **_OFF},
    # Not a MAML++ switch: BOIL's body-only inner loop in MAML's setting, for comparison.
    "boil": {"algorithm": "boil", **_OFF},
    "msl": {"algorithm": "mamlpp", **_OFF, "mamlpp.msl": True},
    "lslr": {"algorithm": "mamlpp", **_OFF, "mamlpp.lslr": True},
    "bn": {"algorithm": "mamlpp", **_OFF, "model.bn_mode": "per_step_running"},
    "cosine": {"algorithm": "maml", **_OFF, "meta_lr_schedule": "cosine"},
    "doa": {"algorithm": "mamlpp", **_OFF, "mamlpp.doa_steps": -1},
    "mamlpp": {
        "algorithm": "mamlpp",
        "mamlpp.msl": True,
        "mamlpp.lslr": True,
        "mamlpp.doa_steps": -1,
        "meta_lr_schedule": "cosine",
        "model.bn_mode": "per_step_running",
    },
    # Per-step batch norm normalising with the support set's statistics (MetaBN), alone and
    # with the other four: queries classified independently, without running statistics.
    "bn_support": {"algorithm": "mamlpp", **_OFF, "model.bn_mode": "per_step_support"},
    # The two changes that helped most alone, together without the other three.
    "lslr_bn_support": {
        "algorithm": "mamlpp",
        **_OFF,
        "mamlpp.lslr": True,
        "model.bn_mode": "per_step_support",
    },
    "mamlpp_support": {
        "algorithm": "mamlpp",
        "mamlpp.msl": True,
        "mamlpp.lslr": True,
        "mamlpp.doa_steps": -1,
        "meta_lr_schedule": "cosine",
        "model.bn_mode": "per_step_support",
    },
    # The four other changes with MAML's transductive batch norm: the same protocol as MAML.
    "mamlpp_transductive": {
        "algorithm": "mamlpp",
        "mamlpp.msl": True,
        "mamlpp.lslr": True,
        "mamlpp.doa_steps": -1,
        "meta_lr_schedule": "cosine",
        "model.bn_mode": "transductive",
    },
}
LABELS = {
    "maml": "MAML",
    "boil": "BOIL (the head kept in the inner loop)",
    "msl": "+ multi-step loss",
    "lslr": "+ per-layer per-step rates",
    "bn": "+ per-step batch norm",
    "cosine": "+ cosine meta-LR",
    "doa": "+ derivative-order annealing",
    "mamlpp": "MAML++ (all five)",
    "bn_support": "+ per-step batch norm, support-set statistics",
    "lslr_bn_support": "+ per-layer per-step rates and support-set batch norm",
    "mamlpp_support": "MAML++ (all five), support-set statistics",
    "mamlpp_transductive": "MAML++ but transductive batch norm (the other four)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/omniglot_minimal_20w1s.py")
    parser.add_argument("--variants", default="maml,msl,lslr,bn,cosine,doa,mamlpp")
    parser.add_argument("--root", default="runs")
    parser.add_argument("--name", default="ablate")
    parser.add_argument("--num_tasks", type=int, default=200)
    parser.add_argument("--json", help="write the rows here too")
    parser.add_argument("--table", help="only print the table of a JSON file written before")
    args, extra = parser.parse_known_args()
    if args.table:
        print_table(json.loads(pathlib.Path(args.table).read_text()))
        return
    rows = []
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            sys.exit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        flags = [f"--config.{k}={v}" for k, v in VARIANTS[variant].items()] + extra
        workdir = ROOT / args.root / f"{args.name}_{variant}"
        if (workdir / "checkpoints").exists():
            sys.exit(f"{workdir} already holds a run; remove it or pass another --name")
        workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        train = [sys.executable, "-m", "maml_dist.train", f"--config={args.config}"]
        _run([*train, f"--workdir={workdir}", *flags], workdir / "train.log")
        wall = time.perf_counter() - t0
        evaluate = [sys.executable, "-m", "maml_dist.evaluate", f"--workdir={workdir}"]
        _run([*evaluate, f"--num_tasks={args.num_tasks}"], workdir / "evaluate.log")
        report = json.loads((workdir / "eval" / "results.json").read_text())
        config = json.loads((workdir / "config.json").read_text())
        rows.append(
            {
                "variant": variant,
                "flags": flags,
                "train_wall_s": wall,
                "train_inner_steps": config["inner_steps"],
                "results": report["results"],
            }
        )
        print(f"{variant}: {wall:.1f} s", file=sys.stderr, flush=True)
        if args.json:  # after every run, so a failure later loses nothing
            pathlib.Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    print_table(rows)


def _run(command: list[str], log: pathlib.Path) -> None:
    """Runs `command`, its output in `log`; exits naming the log if it fails."""
    with open(log, "w") as f:
        proc = subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f"{' '.join(command[2:4])} failed (exit {proc.returncode}); see {log}")


def _bn_mode(row: dict) -> str:
    """The row's batch-norm mode: its protocol (transductive or not) at meta-test."""
    modes = [f.split("=", 1)[1] for f in row["flags"] if f.startswith("--config.model.bn_mode=")]
    return modes[-1] if modes else "transductive"


def _percent(mean, ci) -> str:
    return "not finite" if mean is None else f"{100 * mean:.1f}% ± {100 * ci:.1f}"


def print_table(rows: list[dict]) -> None:
    """docs/algorithms.md's table: held-out metric after 1, the trained and the last step."""
    result = rows[0]["results"][0]
    last, trained = result["inner_steps"][-1], rows[0]["train_inner_steps"]
    steps = sorted({1, trained, last})
    print(
        "| variant | batch norm at meta-test | train wall time | "
        + " | ".join(f"after {s} step{'s' * (s > 1)}" for s in steps)
        + " |"
    )
    print("|---|---|---:|" + "---:|" * len(steps))
    for row in rows:
        r = row["results"][0]
        cells = [_percent(r["mean"][s], r["ci95"][s]) for s in steps]
        label, wall = LABELS[row["variant"]], row["train_wall_s"]
        print(f"| {label} | {_bn_mode(row)} | {wall:.0f} s | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
