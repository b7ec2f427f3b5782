"""Meta-step time across processes: one psum per parameter leaf against one fused psum.

Sinusoid paper setting (meta-batch 24 = 25 rounded to a multiple of 8, K=10, one inner step)
on 2 local processes x 4 fake CPU devices over loopback (gloo), against 1 process x 8
devices and 1 process x 1 device, each measured both ways in the same run.

    python scripts/bench_multiprocess.py [--chunk=500] [--reps=5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import bench_record
import timing

ROOT = pathlib.Path(__file__).resolve().parents[1]


def child(args) -> None:
    """One process: builds both step variants, times them, process 0 prints JSON."""
    import jax

    jax.config.update("jax_num_cpu_devices", args.devices)
    if args.num_processes > 1:
        jax.distributed.initialize(
            f"127.0.0.1:{args.port}",
            args.num_processes,
            args.process_id,
            heartbeat_timeout_seconds=30,
        )
    sys.path.insert(0, str(ROOT))
    from configs import sinusoid
    from maml_dist import meta_objective, meta_update, parallel
    from maml_dist import state as state_lib
    from maml_dist.problem import make_problem

    config = sinusoid.get_config()
    config.meta_batch_size = 24
    problem = make_problem(config)
    tx, _ = state_lib.make_meta_optimizer(config)
    mesh = parallel.make_mesh()
    runs, compile_s = {}, {}
    for fused in (False, True):
        spec = dataclasses.replace(
            meta_objective.meta_batch_spec(config, problem), fuse_collectives=fused
        )
        run = meta_update.make_multi_step(
            meta_update.make_train_step(parallel.make_meta_grad_fn(spec, mesh), tx)
        )
        state = state_lib.init_state(
            problem.model,
            problem.family.example_input(),
            tx,
            0,
            problem.algorithm,
            parallel.replicated(mesh),
        )
        with bench_record.compile_times() as seconds:
            runs[fused] = (run, timing.warm(run, state, args.chunk))
        compile_s[fused] = max(seconds, default=0.0)
    med = timing.interleaved_ms_per_step(runs, args.chunk, args.reps)
    if jax.process_index() == 0:
        # Where and how it ran too, for scripts/benchmark.py's records.
        out = {"per_leaf_ms": med[False], "fused_ms": med[True], "compile_s": compile_s[True]}
        out.update(bench_record.environment(), **bench_record.peak_memory())
        print(json.dumps(out))


def launch(num_processes: int, devices: int, args) -> dict:
    """Runs `num_processes` children; every child is SIGKILLed at the deadline."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                f"--devices={devices}",
                f"--num_processes={num_processes}",
                f"--process_id={i}",
                f"--port={port}",
                f"--chunk={args.chunk}",
                f"--reps={args.reps}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
        )
        for i in range(num_processes)
    ]
    try:
        out, _ = procs[0].communicate(timeout=args.deadline)
        for p in procs[1:]:
            p.wait(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
    if any(p.returncode for p in procs):
        raise SystemExit(f"a child failed: {[p.returncode for p in procs]}")
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=500, help="meta-steps per timing")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--deadline", type=int, default=600)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--num_processes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--process_id", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    print(f"meta-batch 24, median of {args.reps} x {args.chunk} steps")
    print("| topology | one psum per leaf (ms/step) | one fused psum (ms/step) |")
    print("|---|---:|---:|")
    for num_processes, devices in ((2, 4), (1, 8), (1, 1)):
        r = launch(num_processes, devices, args)
        print(
            f"| {num_processes} process(es) x {devices} device(s) | {r['per_leaf_ms']:.3f} | "
            f"{r['fused_ms']:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
