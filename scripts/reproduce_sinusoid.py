"""Trains and meta-tests the sinusoid paper config for several seeds; prints the README table.

    python scripts/reproduce_sinusoid.py [--seeds=0,1,2] [--root=runs] [extra train flags...]

Each seed runs `python -m maml_dist.train` then `python -m maml_dist.evaluate` as a user
would; the wall time is that of the whole training process.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--root", default="runs")
    parser.add_argument("--name", default="paper")
    args, extra = parser.parse_known_args()

    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        workdir = ROOT / args.root / f"{args.name}_s{seed}"
        if (workdir / "checkpoints").exists():
            sys.exit(f"{workdir} already holds a run; remove it or pass another --name")
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "maml_dist.train",
                "--config=configs/sinusoid.py",
                f"--workdir={workdir}",
                f"--config.seed={seed}",
                *extra,
            ],
            check=True,
            cwd=ROOT,
            stderr=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - t0
        subprocess.run(
            [sys.executable, "-m", "maml_dist.evaluate", f"--workdir={workdir}"],
            check=True,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        report = json.loads((workdir / "eval" / "results.json").read_text())
        rows.append((seed, wall, {r["shots"]: r for r in report["results"]}))

    print(
        "| seed | train wall time | K=5, 1 step | K=5, 10 steps | K=10, 1 step "
        "| K=10, 10 steps | K=20, 1 step | K=20, 10 steps |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for seed, wall, by_k in rows:
        cells = [
            f"{by_k[k]['mean'][s]:.3f} ± {by_k[k]['ci95'][s]:.3f}"
            for k in (5, 10, 20)
            for s in (1, 10)
        ]
        print(f"| {seed} | {wall:.1f} s | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
