"""kill -9 a training run at random moments, restart it each time, and check the end.

Runs the sinusoid config once without interruption (the reference), then again in a fresh
workdir where each of `--trials` starts is SIGKILLed at a random moment (uniform from 1 s
to `--max_kill_fraction` of the reference's wall time, so some land in start-up, some in
steps, some while an asynchronous checkpoint is being written), and restarted. After the
last trial the run goes to the end.
Checks, and writes to `--json`:

- each restart resumed from the newest checkpoint that was complete when it was killed
  (or started afresh when there was none), as its log says;
- the finished run's `metrics.jsonl` equals the reference's, record for record, every
  value but the timings (bit for bit: the same steps on the same device).

    python scripts/kill9_trials.py [--trials=10] [--num_steps=10000] [--checkpoint_every=50]
        [--max_kill_fraction=0.5] [--seed=0] [--root=/tmp/kill9] [--json=FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMINGS = ("tasks_per_sec", "sec_per_step", "data_sec_per_step", "data_wait_sec_per_step")


def _command(workdir: str, args) -> list[str]:
    return [
        sys.executable,
        "-m",
        "maml_dist.train",
        f"--config={os.path.join(ROOT, 'configs', 'sinusoid.py')}:tiny",
        f"--workdir={workdir}",
        f"--config.num_steps={args.num_steps}",
        f"--config.checkpoint_every={args.checkpoint_every}",
        f"--config.log_every={args.checkpoint_every // 2}",
        f"--config.eval_every={args.checkpoint_every * 4}",
        f"--config.seed={args.seed}",
        "--compile_cache=off",
    ]


def _env() -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    env.pop("XLA_FLAGS", None)
    return env


def _complete_steps(workdir: str) -> list[int]:
    """Checkpoint steps orbax would restore: finished folders named by their step."""
    folder = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


def _partial(workdir: str) -> set[str]:
    """The temporary folders of orbax: checkpoints whose write had not finished."""
    folder = os.path.join(workdir, "checkpoints")
    return {n for n in os.listdir(folder) if "tmp" in n} if os.path.isdir(folder) else set()


def _records(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


def _run_to_end(workdir: str, args, log: str) -> float:
    started = time.perf_counter()
    with open(log, "w") as out:
        rc = subprocess.run(
            _command(workdir, args), stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT
        ).returncode
    if rc != 0:
        sys.exit(f"the run in {workdir} failed with status {rc}; see {log}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--num_steps", type=int, default=10000)
    parser.add_argument("--max_kill_fraction", type=float, default=0.5)
    parser.add_argument("--checkpoint_every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default="/tmp/kill9")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    shutil.rmtree(args.root, ignore_errors=True)
    os.makedirs(args.root)
    reference, work = os.path.join(args.root, "reference"), os.path.join(args.root, "killed")
    wall = _run_to_end(reference, args, os.path.join(args.root, "reference.log"))
    print(f"reference: {wall:.1f} s", flush=True)

    rng = random.Random(args.seed)
    trials, expected = [], None
    for trial in range(args.trials):
        log = os.path.join(args.root, f"trial{trial:02d}.log")
        delay = rng.uniform(1.0, max(1.0, args.max_kill_fraction * wall))
        partial_before = _partial(work)
        with open(log, "w") as out:
            proc = subprocess.Popen(
                _command(work, args), stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT
            )
            try:
                proc.wait(timeout=delay)
                finished = True
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                finished = False
        with open(log) as f:
            text = f.read()
        resumed = re.search(r"resumed from step (\d+)", text)
        record = {
            "trial": trial,
            "kill_after_s": round(delay, 2),
            "finished_before_kill": finished,
            "resumed_from": int(resumed.group(1)) if resumed else None,
            "expected_resume": expected,
        }
        record["resumed_right"] = record["resumed_from"] == expected
        # A temporary folder this start left behind: it was killed mid-write.
        record["killed_while_writing"] = bool(_partial(work) - partial_before) and not finished
        steps = _complete_steps(work)
        expected = steps[-1] if steps else None
        record["complete_checkpoints_after"] = steps[-3:]
        trials.append(record)
        print(json.dumps(record), flush=True)
        if finished:
            break
    _run_to_end(work, args, os.path.join(args.root, "final.log"))
    with open(os.path.join(args.root, "final.log")) as f:
        resumed = re.search(r"resumed from step (\d+)", f.read())
    final_resume_right = (int(resumed.group(1)) if resumed else None) == expected
    same = _records(work) == _records(reference)
    summary = {
        "trials": len(trials),
        "killed": sum(not t["finished_before_kill"] for t in trials),
        "killed_while_writing_a_checkpoint": sum(t["killed_while_writing"] for t in trials),
        "all_resumed_from_newest_complete": all(t["resumed_right"] for t in trials)
        and final_resume_right,
        "metrics_equal_to_uninterrupted": same,
        "reference_wall_s": round(wall, 1),
        "per_trial": trials,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "per_trial"}), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    sys.exit(0 if same and summary["all_resumed_from_newest_complete"] else 1)


if __name__ == "__main__":
    main()
