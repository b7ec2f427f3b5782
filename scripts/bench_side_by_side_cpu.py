"""Omniglot meta-steps on this CPU, PyTorch and ours side by side, interleaved in rounds.

    python scripts/bench_side_by_side_cpu.py [--rounds=3] [--data_dir=../shared/data/omniglot]
        [--trainer_steps=120] [--torch_python=/work/torchenv/bin/python]
        [--out=scripts/results/cpu/side_by_side.jsonl] [--quick] [--conv_impl=auto]

The setting: 5-way 1-shot, 15 query images per class, second-order MAML, one inner step,
fp32, meta-batch 32, the MAML paper's Omniglot conv net (maml_dist.models.ConvNet).
Every round runs, one after another, each in its own process:

    pytorch         scripts/bench_pytorch_omniglot.py under --torch_python (a Python with
                    torch, which is no project dependency): a learn2learn-style loop over
                    the tasks and a torch.func.vmap variant, its FLOP count and MKL's
                    2048^3 matmul peak
    step            our bare meta-step (scripts/benchmark.py's omniglot_step_mb32 child:
                    the trainer's own task batching and conv choices for the CPU, or the
                    --conv_impl given; "auto" is slices since maml_dist 0.5, im2col before)
    trainer_host    scripts/bench_omniglot_trainer.py on the minimal Omniglot sets with
                    --conv_impl, and --data_placement=host where the script has the option
                    (else its default host feed)
    trainer_device  the same with --data_placement=device, where the script has the option
    matmul_peak     a jitted fp32 2048x2048 @ 2048x2048 product in JAX, best of 10

The machine is noisy, so ratios (ours over PyTorch) are taken within a round, and the
median over rounds is reported. Our FLOPs per task are counted once, by XLA's cost analysis
of the vmapped meta-gradient with nn.Conv convolutions (the network's arithmetic; the
im2col network's count adds its patch extraction, which moves data), and GFLOP/s is that
count times tasks/s, against the same round's JAX matmul peak. Every record is appended to
--out as it finishes; a table goes to stdout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
STEP_PARAMS = {
    "meta_batch": 32,
    "ways": 5,
    "shots": 1,
    "queries": 15,
    "inner_steps": 1,
    "algorithm": "maml",
    "batching": "auto",
    "conv_impl": "auto",
    "steps": 5,
    "reps": 5,
}
MATMUL_N = 2048


def main() -> None:
    args = _parse()
    if args.child:
        print(json.dumps(_CHILDREN[args.child]()), flush=True)
        return
    run_id = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = _child_json([sys.executable, __file__, "--child=env"], 120)
    placements = _placements()
    print(f"run {run_id}: {args.rounds} round(s); trainer data placements: {placements}")

    def record(kind: str, round_: int | None, r: dict) -> dict:
        full = {"run_id": run_id, "kind": kind, "round": round_, "time": _now(), **r}
        with open(out, "a") as f:
            f.write(json.dumps(full) + "\n")
        brief = {k: v for k, v in r.items() if not isinstance(v, list | dict)}
        print(f"  {kind} (round {round_}): {json.dumps(brief)}", flush=True)
        return full

    record("environment", None, {"env": env, "args": vars(args), "placements": placements})
    flops = record("flops", None, _run([sys.executable, __file__, "--child=flops"], 600))
    rounds = []
    for i in range(args.rounds):
        print(f"round {i}", flush=True)
        row = {"pytorch": record("pytorch", i, _pytorch(args))}
        row["step"] = record("step", i, _step(args))
        for placement in placements:
            row[f"trainer_{placement}"] = record(
                f"trainer_{placement}", i, _trainer(args, placement, len(placements) > 1)
            )
        row["matmul_peak"] = record(
            "matmul_peak", i, _run([sys.executable, __file__, "--child=matmul"], 300)
        )
        rounds.append(row)
    summary = _summarise(rounds, flops)
    record("summary", None, summary)
    print(_table(rounds, summary))


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared/data/omniglot"))
    parser.add_argument("--trainer_steps", type=int, default=120)
    parser.add_argument("--trainer_log_every", type=int, default=30)
    parser.add_argument("--torch_python", default="/work/torchenv/bin/python")
    parser.add_argument("--torch_variants", default="loop,vmap")
    parser.add_argument("--out", default=str(SCRIPTS / "results/cpu/side_by_side.jsonl"))
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke test")
    parser.add_argument("--conv_impl", default="auto", help="our step's and trainer's conv")
    parser.add_argument("--child", choices=sorted(_CHILDREN), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.trainer_steps, args.trainer_log_every = 6, 2
    return args


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _env() -> dict:
    """This process's environment with the repository first on the import path."""
    path = os.environ.get("PYTHONPATH")
    return os.environ | {"PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def _run(cmd: list[str], timeout: float) -> dict:
    """The child's last JSON line with its wall time, or {"error": ...}; never raises."""
    t0 = time.perf_counter()
    try:
        r = _child_json(cmd, timeout)
    except (subprocess.SubprocessError, OSError, ValueError) as e:
        r = {"error": f"{type(e).__name__}: {e}"[-2000:]}
    r["wall_s"] = time.perf_counter() - t0
    return r


def _child_json(cmd: list[str], timeout: float) -> dict:
    done = _bounded(cmd, timeout)
    lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
    if not lines:
        raise ValueError(f"no JSON from {cmd[1:3]}; stderr: {done.stderr[-1500:]}")
    return json.loads(lines[-1])


def _bounded(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    done = subprocess.run(
        cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise subprocess.SubprocessError(
            f"exit {done.returncode} from {cmd[1:3]}: {done.stderr[-1500:]}"
        )
    return done


def _pytorch(args: argparse.Namespace) -> dict:
    cmd = [args.torch_python, str(SCRIPTS / "bench_pytorch_omniglot.py")]
    cmd.append(f"--variants={args.torch_variants}")
    if args.quick:
        cmd += ["--warmup=1", "--reps=1"]
    r = _run(cmd, 600)
    loops = [r.get(f"{v}_tasks_per_sec") for v in args.torch_variants.split(",")]
    loops = [x for x in loops if x]
    r["best_tasks_per_sec"] = max(loops, default=None)
    return r


def _step(args: argparse.Namespace) -> dict:
    params = dict(STEP_PARAMS, conv_impl=args.conv_impl)
    if args.quick:
        params.update(steps=1, reps=1)
    cmd = [sys.executable, str(SCRIPTS / "benchmark.py"), "--child=omniglot_step_mb32"]
    return _run([*cmd, f"--params={json.dumps(params)}"], 600)


def _placements() -> list[str]:
    """The trainer's data placements to run: host and device where the option exists."""
    cmd = [sys.executable, str(SCRIPTS / "bench_omniglot_trainer.py"), "--help"]
    try:
        text = _bounded(cmd, 120).stdout
    except (subprocess.SubprocessError, OSError):
        text = ""
    return ["host", "device"] if "--data_placement" in text else ["host"]


def _trainer(args: argparse.Namespace, placement: str, option: bool) -> dict:
    cmd = [
        sys.executable,
        str(SCRIPTS / "bench_omniglot_trainer.py"),
        f"--data_dir={args.data_dir}",
        f"--steps={args.trainer_steps}",
        f"--log_every={args.trainer_log_every}",
        f"--conv_impl={args.conv_impl}",
    ]
    if option:
        cmd.append(f"--data_placement={placement}")
    t0 = time.perf_counter()
    try:
        text = _bounded(cmd, 900).stdout
    except (subprocess.SubprocessError, OSError) as e:
        return {"error": f"{type(e).__name__}: {e}"[-2000:]}
    r = {
        "data_placement": placement if option else "host (the script's only feed)",
        "command": " ".join(cmd[1:]),
        "wall_s": time.perf_counter() - t0,
        "intervals": [
            {"step": int(m[1]), "tasks_per_sec": float(m[2]), "data_wait_s": float(m[4])}
            for m in re.finditer(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", text, re.M)
        ],
    }
    m = re.search(r"median steady throughput: ([\d.]+) tasks/s", text)
    r["tasks_per_sec"] = float(m[1]) if m else None
    m = re.search(r"longest single XLA compile: ([\d.]+) s", text)
    r["compile_s"] = float(m[1]) if m else None
    return r


def _summarise(rounds: list[dict], flops: dict) -> dict:
    """Per-round ratios (ours over PyTorch's faster variant, and over its loop), medians."""
    gflop = flops.get("gflop_per_task_xla_conv")
    ours = [k for k in rounds[0] if k == "step" or k.startswith("trainer_")]
    per_round = []
    for row in rounds:
        torch_best = row["pytorch"].get("best_tasks_per_sec")
        torch_loop = row["pytorch"].get("loop_tasks_per_sec")
        peak = row["matmul_peak"].get("gflops")
        entry = {"pytorch_best": torch_best, "pytorch_loop": torch_loop, "jax_peak": peak}
        entry["pytorch_vmap"] = row["pytorch"].get("vmap_tasks_per_sec")
        entry["torch_peak"] = row["pytorch"].get("matmul_peak_gflops")
        for k in ours:
            tps = row[k].get("tasks_per_sec")
            entry[k] = tps
            entry[f"{k}_over_pytorch"] = _div(tps, torch_best)
            entry[f"{k}_over_pytorch_loop"] = _div(tps, torch_loop)
            entry[f"{k}_gflops"] = None if tps is None or gflop is None else tps * gflop
            entry[f"{k}_of_peak"] = _div(entry[f"{k}_gflops"], peak)
        if gflop is not None and torch_best:
            entry["pytorch_best_gflops"] = torch_best * gflop
            entry["pytorch_best_of_peak"] = _div(torch_best * gflop, peak)
        per_round.append(entry)
    keys = per_round[0].keys()
    median = {}
    for k in keys:
        values = [e[k] for e in per_round if e.get(k) is not None]
        median[k] = statistics.median(values) if values else None
    trainer = [k for k in ours if k.startswith("trainer_")]
    return {
        "gflop_per_task": gflop,
        "flops": flops,
        "per_round": per_round,
        "median": median,
        "goal": {
            k: {
                "tasks_per_sec_ge_42": (median[k] or 0) >= 42,
                "ratio_ge_1_5": (median[f"{k}_over_pytorch"] or 0) >= 1.5,
            }
            for k in trainer
        },
    }


def _div(a, b):
    return None if a is None or not b else a / b


def _table(rounds: list[dict], s: dict) -> str:
    ours = [k for k in rounds[0] if k == "step" or k.startswith("trainer_")]
    head = ["round", "PyTorch loop", "PyTorch vmap", *ours]
    head += [f"{k} / PyTorch" for k in ours] + ["JAX matmul GFLOP/s", "torch matmul GFLOP/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for name, e in [*enumerate(s["per_round"]), ("median", s["median"])]:
        cells = [str(name), _f(e["pytorch_loop"]), _f(e["pytorch_vmap"])]
        cells += [_f(e[k]) for k in ours] + [_f(e[f"{k}_over_pytorch"], ".2f") for k in ours]
        cells += [_f(e["jax_peak"], ".0f"), _f(e["torch_peak"], ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    m, gflop = s["median"], s["gflop_per_task"]
    lines.append("")
    lines.append(f"GFLOP per task (XLA cost analysis, nn.Conv network): {_f(gflop, '.3f')}")
    lines.append("| who | tasks/s (median) | GFLOP/s | fraction of JAX matmul peak |")
    lines.append("|---|---:|---:|---:|")
    lines.append(
        f"| PyTorch (faster variant) | {_f(m['pytorch_best'])} | "
        f"{_f(m.get('pytorch_best_gflops'))} | {_f(m.get('pytorch_best_of_peak'), '.3f')} |"
    )
    for k in ours:
        lines.append(
            f"| {k} | {_f(m[k])} | {_f(m[f'{k}_gflops'])} | {_f(m[f'{k}_of_peak'], '.3f')} |"
        )
    lines.append("")
    for k, g in s["goal"].items():
        lines.append(
            f"{k}: >= 42 tasks/s {'met' if g['tasks_per_sec_ge_42'] else 'NOT met'}; "
            f">= 1.5x PyTorch {'met' if g['ratio_ge_1_5'] else 'NOT met'}"
        )
    return "\n".join(lines)


def _f(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def _child_env() -> dict:
    sys.path.insert(0, str(SCRIPTS))
    import bench_record

    return bench_record.environment()


def _child_matmul() -> dict:
    """Best fp32 GFLOP/s of a jitted MATMUL_N^3 product in JAX (XLA:CPU)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (MATMUL_N, MATMUL_N), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (MATMUL_N, MATMUL_N), jnp.float32)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    flop = 2 * MATMUL_N**3
    return {
        "n": MATMUL_N,
        "gflops": flop / min(times) / 1e9,
        "median_gflops": flop / statistics.median(times) / 1e9,
    }


def _child_flops() -> dict:
    """XLA's FLOP count of one task's meta-gradient, with nn.Conv and with im2col convs.

    The vmapped meta-gradient bench_omniglot_step.measure counts, compiled but not run
    (nn.Conv's under vmap runs at ~1 task/s on this CPU).
    """
    sys.path.insert(0, str(SCRIPTS))
    import bench_omniglot_step as step
    import jax

    from maml_dist import algorithms, models

    n, queries = STEP_PARAMS["meta_batch"], STEP_PARAMS["queries"]
    tasks = step.make_tasks(n, queries)
    inner = algorithms.InnerConfig(lr=0.4, steps=1)
    out = {}
    for conv_impl in ("xla", "im2col"):
        model = models.ConvNet(num_classes=STEP_PARAMS["ways"], conv_impl=conv_impl)

        def loss_fn(p, x, y, model=model):
            return step._xent(model.apply({"params": p}, x), y)

        split = algorithms.make_head_split(model, step._xent, {})
        algorithm = algorithms.make_algorithm("maml", loss_fn, inner, head_split=split)
        params = algorithm.init(model.init(jax.random.key(0), tasks.support_x[0])["params"])
        fn = jax.jit(lambda p, t, a=algorithm: step._vmapped(a, p, t))
        out[f"gflop_per_task_{conv_impl}_conv"] = step._flops(fn, params, tasks) / n
    return out


_CHILDREN = {"env": _child_env, "matmul": _child_matmul, "flops": _child_flops}


if __name__ == "__main__":
    main()
