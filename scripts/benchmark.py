"""The standard benchmark settings, one JSON record per setting (a JSON-lines file).

    python scripts/benchmark.py --out=bench.jsonl [--settings=a,b,...] [--quick]
        [--data_dir=FOLDER_WITH_MINIMAL_OMNIGLOT] [--workdir_root=DIR --keep]
        [--deadline_s=1200] [--budget_s=SECONDS] [--trainer_steps=N --trainer_log_every=M]
        [--repeat=N] [--conv_impl=auto]

Settings (`--list` prints them; the default is every one on an accelerator but the bare
loops, and on CPU the same with the bare sinusoid loop and without meta-batch 128 and
512, which take many minutes there):

    sinusoid_bare_loop      scripts/bench_sinusoid_bare.py: the paper setting trained by a
                            hand-written jitted JAX loop (numpy sampling on the host, one
                            dispatch per step), its whole process timed; the reference
                            of `paper_vs_bare`
    sinusoid_paper          `python -m maml_dist.train --config=configs/sinusoid.py` in a
                            fresh workdir and an empty compilation cache: the whole
                            process's wall time and its parts, read from the log;
                            paper_vs_bare is its wall time over the bare loop's when both
                            ran in this call (in the same repetition)
    sinusoid_paper_cached   the same in another fresh workdir, the compilation cache
                            filled by the run before (primed here if that did not run)
    omniglot_step_mbN       the bare second-order Omniglot 5-way 1-shot meta-step, 15
                            queries per class, N = 32, 128, 512 tasks (vmap + XLA conv on
                            accelerators, the trainer's own choices on CPU: loop + slices
                            since maml_dist 0.5, loop + im2col before)
    omniglot_trainer_mbN    the same setting through the trainer, host feed included, on
                            generated images unless --data_dir; trainer_vs_step is its
                            tasks/s over the step's when both ran in this call
    omniglot_trainer_device_mbN
                            the same with config.data_placement="device": the training
                            images on the device, episodes drawn in the compiled step
    omniglot_step_mb512_tpv128, omniglot_trainer_device_mb512_tpv128
                            meta-batch 512 run as four vmapped groups of 128 tasks
                            (config.tasks_per_vmap=128), against 512 at once: on
                            accelerators only, where tasks are vmapped
    sinusoid_step_1proc     the sinusoid meta-step (meta-batch 24) on 1 process x 8 CPU
    sinusoid_step_2proc     devices, and on 2 local processes x 4 over loopback
    sinusoid_bare_device    the bare loop's split, named in --settings only: sampling
    sinusoid_bare_scan      inside the jitted step (one dispatch per step); that and 500
    sinusoid_bare_api       steps per dispatch (lax.scan); maml_dist's own meta-step in
    sinusoid_bare_host_jax  the bare loop; host sampling with eager jax.random; numpy
    sinusoid_bare_scan_host sampling of 500 meta-batches at once, 500 steps per dispatch

`--repeat=N` runs the settings N times over, interleaved (a b a b ...), so that settings
compared with each other see the same machine load; each record says its repetition.
Each setting runs in its own process, so its peak memory is its own; every child is
SIGKILLed at its deadline. Records are appended, one line each as it finishes, so a run
stopped early keeps what it measured. `--quick` shrinks every step count so all the
CPU defaults run in a minute or two: a smoke test, not a measurement. `--conv_impl` is
the Omniglot settings' `model.conv_impl` ("auto", the default: the trainer's choice for the
backend); `--conv_impl=im2col` repeats on CPU what "auto" measured before maml_dist 0.5.
Records give the conv as resolved.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import bench_multiprocess
import bench_record
import bench_trainer_log

ROOT = bench_record.ROOT
MiB = 2**20
META_BATCHES = (32, 128, 512)
# The bare loop's variants (scripts/bench_sinusoid_bare.py --variant).
BARE = {
    "sinusoid_bare_loop": "host",
    "sinusoid_bare_device": "device",
    "sinusoid_bare_scan": "scan",
    "sinusoid_bare_api": "api",
    "sinusoid_bare_host_jax": "host_jax",
    "sinusoid_bare_scan_host": "scan_host",
}
# Meta-batch 512 in vmapped groups of 128 (config.tasks_per_vmap), beside 512 at once.
GROUPED = ("omniglot_step_mb512_tpv128", "omniglot_trainer_device_mb512_tpv128")
SETTINGS = (
    "sinusoid_bare_loop",  # before the trainer run, whose record then holds the ratio
    "sinusoid_paper",
    "sinusoid_paper_cached",
    # On an accelerator, whose check has a time budget (scripts/gpu_check.sh), what its
    # targets name comes first: the step, the trainer with episodes drawn on the device,
    # meta-batch 512 in groups; the host feed last of the Omniglot settings.
    *(f"omniglot_step_mb{n}" for n in META_BATCHES),
    GROUPED[0],
    *(f"omniglot_trainer_device_mb{n}" for n in META_BATCHES),
    GROUPED[1],
    *(f"omniglot_trainer_mb{n}" for n in META_BATCHES),
    "sinusoid_step_1proc",
    "sinusoid_step_2proc",
    "sinusoid_bare_device",
    "sinusoid_bare_scan",
    "sinusoid_bare_api",
    "sinusoid_bare_host_jax",
    "sinusoid_bare_scan_host",
)
CPU_SLOW = {
    f"omniglot_{kind}_mb{n}" for kind in ("step", "trainer", "trainer_device") for n in (128, 512)
} | set(GROUPED)
# Run only when named: the bare loop's split into its parts.
NAMED_ONLY = set(BARE) - {"sinusoid_bare_loop"}
# In the default on CPU only, where the target against it is set: 70,000 dispatches take
# a long part of an accelerator check's time budget (scripts/gpu_check.sh).
CPU_DEFAULT_ONLY = {"sinusoid_bare_loop"}
# Overrides of configs/sinusoid.py for --quick: a thousand steps, two evals, two saves.
SINUSOID_QUICK = {
    "num_steps": 1000,
    "log_every": 100,
    "eval_every": 500,
    "checkpoint_every": 500,
}
# The bare loop's steps and logging interval: full (the config's), then --quick.
BARE_SIZE = {"steps": (70_000, 1000), "log_every": (500, 100)}
# Step counts: full, then --quick.
STEP = {"steps": (5, 1), "reps": (5, 1)}
TRAINER = {"steps": (120, 4), "log_every": (30, 2)}
PROCESSES = {"chunk": (500, 20), "reps": (5, 2)}
# The minimal Omniglot layout the trainer setting reads: the config's held-out (Greek,
# Korean) and validation (Tagalog) alphabets and three to train on, 20 drawers each.
GENERATED_SETS = {
    "images_background_small1": {"Alpha": 20, "Beta": 20, "Greek": 5, "Tagalog": 5},
    "images_background_small2": {"Gamma": 20, "Korean": 5},
}


class Terminated(BaseException):
    """SIGTERM arrived (an outer `timeout`): stop, killing the running child."""


def main() -> None:
    args = _parse()
    if args.list:
        print("\n".join(SETTINGS))
        return
    if args.child:
        _child(args)
        return
    signal.signal(signal.SIGTERM, _on_sigterm)
    root = pathlib.Path(args.workdir_root or tempfile.mkdtemp(prefix="maml_bench_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        _run_all(args, root)
    except Terminated:
        # The running child is already killed; the records written so far stay.
        sys.exit(f"benchmark.py: stopped by SIGTERM; finished settings are in {args.out}")
    finally:
        if not args.keep and not args.workdir_root:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"runs, logs and caches are in {root}", file=sys.stderr)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON-lines file the records are appended to")
    parser.add_argument("--settings", help="comma-separated; default: see the docstring")
    parser.add_argument("--quick", action="store_true", help="tiny step counts: a smoke test")
    parser.add_argument("--data_dir", help="minimal Omniglot sets; default: generated images")
    parser.add_argument("--workdir_root", help="runs, logs and caches go here (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workdir root")
    parser.add_argument("--deadline_s", type=float, default=1200, help="per setting")
    parser.add_argument("--budget_s", type=float, help="for the whole call; then skips")
    parser.add_argument("--trainer_steps", type=int, help="Omniglot trainer steps")
    parser.add_argument("--trainer_log_every", type=int, help="steps per logged interval")
    parser.add_argument("--repeat", type=int, default=1, help="runs of the settings, interleaved")
    parser.add_argument("--conv_impl", default="auto", help="the Omniglot settings' conv")
    parser.add_argument("--list", action="store_true", help="print the setting names")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a setting, run in this process
    parser.add_argument("--params", help=argparse.SUPPRESS)  # its parameters, JSON
    args = parser.parse_args()
    if not (args.out or args.list or args.child):
        parser.error("--out=FILE is required")
    if args.settings:
        unknown = sorted(set(args.settings.split(",")) - set(SETTINGS))
        if unknown:
            parser.error(f"unknown setting(s) {unknown}; --list prints the known ones")
    return args


def _on_sigterm(*_) -> None:
    raise Terminated


class _Run:
    """One call's shared state: where things go, the clock, the records so far."""

    def __init__(self, args: argparse.Namespace, root: pathlib.Path):
        self.args, self.root = args, root
        self.started = time.time()
        self.run_id = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        self.records: dict[str, dict] = {}  # the latest of each setting
        self.repeat = 0  # the repetition running (--repeat)
        self.env: dict | None = None
        self.cache = root / "compile_cache"  # empty at first: the cold run fills it

    def deadline(self) -> float:
        """Seconds the next child may run: the per-setting deadline or what is left."""
        if self.args.budget_s is None:
            return self.args.deadline_s
        return min(self.args.deadline_s, self.args.budget_s - (time.time() - self.started))

    def size(self, table: dict) -> dict:
        """The full or --quick values of a table of step counts."""
        return {k: v[1 if self.args.quick else 0] for k, v in table.items()}


def _run_all(args: argparse.Namespace, root: pathlib.Path) -> None:
    run = _Run(args, root)
    run.env = _probe(run)
    if args.settings:
        names = args.settings.split(",")
    else:
        on_cpu = run.env.get("platform") == "cpu"
        names = [
            s
            for s in SETTINGS
            if s not in NAMED_ONLY
            and not (on_cpu and s in CPU_SLOW)
            and not (not on_cpu and s in CPU_DEFAULT_ONLY)
        ]
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for run.repeat in range(args.repeat):
        for name in names:
            _run_one(run, name, out)


def _run_one(run: _Run, name: str, out: pathlib.Path) -> None:
    """Measures one setting and appends its record (an error record if it failed)."""
    left = run.deadline()
    t0 = time.time()
    if left < 10:
        record = {"error": f"skipped: {left:.0f} s of --budget_s left"}
    else:
        try:
            record = _measure(run, name)
        except Terminated:
            raise
        except Exception as e:  # a broken setting must not lose the others' records
            record = {"error": f"{type(e).__name__}: {e}"}
    record = _complete(run, name, record, time.time() - t0)
    run.records[name] = record
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")
    _print_row(record)


def _measure(run: _Run, name: str) -> dict:
    if name in BARE:
        return _sinusoid_bare(run, BARE[name])
    if name.startswith("sinusoid_paper"):
        return _sinusoid_paper(run, cached=name.endswith("_cached"))
    if name.startswith("sinusoid_step_"):
        return _processes(run, 2 if name.endswith("2proc") else 1)
    kind, placement, mb, per_vmap = re.fullmatch(
        r"omniglot_(step|trainer)(_device)?_mb(\d+)(?:_tpv(\d+))?", name
    ).groups()
    params = {"meta_batch": int(mb), "ways": 5, "shots": 1, "queries": 15, "inner_steps": 1}
    params["tasks_per_vmap"] = int(per_vmap or 0)
    if kind == "step":
        params.update(algorithm="maml", batching="auto", conv_impl=run.args.conv_impl)
        params.update(run.size(STEP))
    else:
        params.update(_omniglot_data(run), conv_impl=run.args.conv_impl, **run.size(TRAINER))
        # Shorter runs where a call has a time budget (scripts/gpu_check.sh); the first
        # logged interval holds the compile, so keep two more after it.
        if run.args.trainer_steps:
            params["steps"] = run.args.trainer_steps
        if run.args.trainer_log_every:
            params["log_every"] = run.args.trainer_log_every
        params["cache_dir"] = str(run.root / "omniglot_cache")  # decoded images
        params["data_placement"] = "device" if placement else "host"
    return _in_child(run, name, params)


def _complete(run: _Run, name: str, record: dict, wall: float) -> dict:
    """Fills every field a record must have, in one order, None where not measured."""
    full = {
        "setting": name,
        "run_id": run.run_id,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": run.args.quick,
        "repeat": run.repeat,
        **{k: run.env.get(k) for k in ("platform", "device_kind", "device_count")},
        "process_count": run.env.get("process_count"),
        "versions": run.env.get("versions"),
        "steps_per_sec": None,
        "tasks_per_sec": None,
        "compile_s": None,
        "peak_memory_bytes": None,
        "peak_memory_source": None,
        "wall_s": wall,
        "params": {},
        "error": None,
    }
    full.update(record)
    step = run.records.get(re.sub("trainer(_device)?", "step", name))
    trainer = re.match(r"omniglot_trainer(_device)?_mb", name)
    if trainer and step and step.get("tasks_per_sec") and full["tasks_per_sec"]:
        full["trainer_vs_step"] = full["tasks_per_sec"] / step["tasks_per_sec"]
    # The trainer run against the bare loop: on the later of the two in one repetition.
    pair = {"sinusoid_paper": "sinusoid_bare_loop", "sinusoid_bare_loop": "sinusoid_paper"}
    other = run.records.get(pair.get(name, ""))
    if other and other["repeat"] == run.repeat and not (full["error"] or other["error"]):
        paper, bare = (full, other) if name == "sinusoid_paper" else (other, full)
        full["paper_vs_bare"] = paper["wall_s"] / bare["wall_s"]
    return full


def _print_row(r: dict) -> None:
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    mem = None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / MiB
    print(
        f"{r['setting']}: steps/s {fmt(r['steps_per_sec'], '.1f')}, tasks/s "
        f"{fmt(r['tasks_per_sec'], '.1f')}, compile {fmt(r['compile_s'], '.1f')} s, peak "
        f"{fmt(mem, '.0f')} MiB ({r['peak_memory_source']}), wall {r['wall_s']:.1f} s"
        + (f", paper_vs_bare {r['paper_vs_bare']:.3f}" if "paper_vs_bare" in r else "")
        + (f", ERROR {r['error']}" if r["error"] else ""),
        flush=True,
    )


def _env() -> dict:
    """This process's environment with the repository first on the import path."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def _child_json(run: _Run, name: str, params: dict | None = None) -> dict:
    """Runs `--child=name` in a fresh process; returns the JSON its last line prints."""
    cmd = [sys.executable, __file__, f"--child={name}", f"--params={json.dumps(params or {})}"]
    done = bench_record.run_bounded(cmd, run.deadline(), run.root / name, _env())
    if done.returncode != 0:
        raise RuntimeError(_failure(done))
    return json.loads(done.stdout.read_text().strip().splitlines()[-1]) | {"wall_s": done.wall_s}


def _failure(done: bench_record.Finished) -> str:
    what = "killed at its deadline" if done.timed_out else f"exit status {done.returncode}"
    tail = done.stderr.read_text()[-1500:] if done.stderr.exists() else ""
    return f"{what} after {done.wall_s:.0f} s (log {done.stderr}): {tail}"


def _probe(run: _Run) -> dict:
    """The devices and versions, from a child process.

    This process never starts a backend: one that held the accelerator would starve the
    children that measure.
    """
    try:
        return _child_json(run, "probe")
    except Exception as e:
        print(f"benchmark.py: could not probe the devices: {e}", file=sys.stderr)
        return {}


def _sinusoid_paper(run: _Run, cached: bool) -> dict:
    """The sinusoid paper config through the real trainer, one whole process.

    The cold run compiles into an empty cache folder of this call; the cached run reuses
    it, priming it first with an unrecorded run when the cold one did not run here.
    """
    overrides = SINUSOID_QUICK if run.args.quick else {}
    name = "sinusoid_paper" + ("_cached" if cached else "")
    if cached and "sinusoid_paper" not in run.records:
        _train_sinusoid(run, name + "_priming", overrides)
    elif not cached:
        shutil.rmtree(run.cache, ignore_errors=True)
    done, workdir = _train_sinusoid(run, name, overrides)
    record = bench_trainer_log.parts(done.stderr.read_text(), done.started, done.wall_s)
    config = json.loads((workdir / "config.json").read_text())
    logged = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    rates = bench_trainer_log.steady_rates(logged)
    record.update(
        rates,
        wall_s=done.wall_s,
        # The host's: the trainer's device high-water mark is not visible from outside.
        peak_memory_bytes=done.peak_rss_bytes,
        peak_memory_source="host_peak_rss",
        loop_steps_per_sec=config["num_steps"] / record["steps_s"],
        params={
            "command": "python -m maml_dist.train --config=configs/sinusoid.py",
            "overrides": overrides,
            "compile_cache": "warm" if cached else "empty",
            **{
                k: config[k]
                for k in ("num_steps", "meta_batch_size", "eval_every", "checkpoint_every")
            },
        },
    )
    return record


def _train_sinusoid(run: _Run, name: str, overrides: dict):
    """Runs the trainer CLI in a fresh workdir; returns (the finished process, workdir)."""
    workdir = run.root / name
    shutil.rmtree(workdir, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "maml_dist.train",
        "--config=configs/sinusoid.py",
        f"--workdir={workdir}",
        f"--compile_cache={run.cache}",
        *(f"--config.{k}={v}" for k, v in overrides.items()),
    ]
    # JAX_LOG_COMPILES only adds log lines: when each compile ends, and cache hits.
    env = _env() | {"JAX_LOG_COMPILES": "1"}
    done = bench_record.run_bounded(cmd, run.deadline(), run.root / name, env)
    if done.returncode != 0:
        raise RuntimeError(_failure(done))
    return done, workdir


def _sinusoid_bare(run: _Run, variant: str) -> dict:
    """The paper setting trained by scripts/bench_sinusoid_bare.py, one whole process.

    The process's wall time splits like the trainer's, from the script's time stamps:
    startup (to the first step call), compile (the first call, one step included, or
    the scan's ahead-of-time compile), steps (the loop), shutdown (to the exit); no
    validations nor checkpoints.
    """
    size = run.size(BARE_SIZE)
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "bench_sinusoid_bare.py"),
        f"--variant={variant}",
        f"--steps={size['steps']}",
        f"--log_every={size['log_every']}",
    ]
    name = next(k for k, v in BARE.items() if v == variant)
    done = bench_record.run_bounded(cmd, run.deadline(), run.root / name, _env())
    if done.returncode != 0:
        raise RuntimeError(_failure(done))
    r = json.loads(done.stdout.read_text().strip().splitlines()[-1])
    marks = r["marks"]
    steps_s = marks["loop_end"] - marks["compiled"]
    return {
        "steps_per_sec": r["steps_per_sec"],
        "tasks_per_sec": r["tasks_per_sec"],
        "wall_s": done.wall_s,
        "peak_memory_bytes": done.peak_rss_bytes,
        "peak_memory_source": "host_peak_rss",
        "startup_s": marks["ready"] - done.started,
        "import_s": marks["imported"] - done.started,
        "compile_s": marks["compiled"] - marks["ready"],
        "steps_s": steps_s,
        "eval_s": 0.0,
        "checkpoint_s": 0.0,
        "shutdown_s": done.started + done.wall_s - marks["loop_end"],
        "evals": 0,
        "checkpoints": 0,
        "loop_steps_per_sec": size["steps"] / steps_s,
        "us_per_step": r["us_per_step"],
        # The host-sampling variants' loop: sampling, and time inside the step calls.
        "sample_s": r.get("sample_s"),
        "call_s": r.get("call_s"),
        "final_loss": r["final_loss"],
        "params": {"command": " ".join(["python", *cmd[1:]]), **r["params"]},
    }


def _processes(run: _Run, num_processes: int) -> dict:
    """The sinusoid step on 1 process x 8 CPU devices or 2 local processes x 4.

    bench_multiprocess.py's children, which time the step with one fused collective (the
    trainer's) and one per parameter leaf; 8 devices in all either way, so the two
    settings differ by the process boundary alone.
    """
    devices = 8 // num_processes
    size = run.size(PROCESSES)
    options = argparse.Namespace(deadline=run.deadline(), **size)
    try:
        r = bench_multiprocess.launch(num_processes, devices, options)
    except SystemExit as e:  # its report of a failed child
        raise RuntimeError(str(e)) from None
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"killed at its deadline of {options.deadline:.0f} s") from None
    steps_per_sec = 1e3 / r["fused_ms"]
    return {
        **r,
        "steps_per_sec": steps_per_sec,
        "tasks_per_sec": 24 * steps_per_sec,
        "params": {
            "meta_batch": 24,
            "num_processes": num_processes,
            "devices_per_process": devices,
            "backend": "cpu",
            **size,
        },
    }


def _in_child(run: _Run, name: str, params: dict) -> dict:
    return _child_json(run, name, params)  # its params, with "auto" resolved


def _omniglot_data(run: _Run) -> dict:
    """Where the trainer setting reads its images: --data_dir, or generated ones."""
    if run.args.data_dir:
        return {"data_dir": os.path.abspath(run.args.data_dir), "data": "given"}
    folder = run.root / "omniglot_generated"
    if not folder.exists():
        sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]  # helpers imports configs
        from helpers import make_omniglot_set  # the tests' generator of the same layout

        for name, alphabets in GENERATED_SETS.items():
            make_omniglot_set(folder, name, alphabets, drawers=20)
    return {"data_dir": str(folder), "data": "generated"}


def _child(args: argparse.Namespace) -> None:
    """One setting measured in this process; prints one JSON line."""
    params = json.loads(args.params or "{}")
    if args.child == "probe":
        print(json.dumps(bench_record.environment()))
        return
    sys.path.insert(0, str(ROOT))
    if args.child.startswith("omniglot_step"):
        import bench_omniglot_step

        tasks = bench_omniglot_step.make_tasks(params["meta_batch"], params["queries"])
        r = bench_omniglot_step.measure(
            params["algorithm"],
            params["conv_impl"],
            params["batching"],
            tasks,
            params["steps"],
            params["reps"],
            params["inner_steps"],
            flops=False,
            tasks_per_vmap=params.get("tasks_per_vmap", 0),
        )
        # The choices "auto" resolved to on this backend.
        params.update(
            conv_impl=r["conv_impl"],
            batching=r["task_batching"],
            tasks_per_vmap=r["tasks_per_vmap"],
        )
        record = {k: r[k] for k in ("compile_s", "steps_per_sec", "tasks_per_sec", "temp_bytes")}
    else:
        import bench_omniglot_trainer

        r = bench_omniglot_trainer.measure(
            params["data_dir"],
            params["steps"],
            params["log_every"],
            params["queries"],
            params["meta_batch"],
            cache_dir=params["cache_dir"],
            data_placement=params.get("data_placement", "host"),
            conv_impl=params.get("conv_impl", "auto"),
            tasks_per_vmap=params.get("tasks_per_vmap", 0),
        )
        params["conv_impl"] = r["conv_impl"]  # "auto" resolved on this backend
        if r["task_batching"] != "vmap":  # groups only split vmap's batch
            params["tasks_per_vmap"] = 0
        steady = r["steady"]
        record = {
            "tasks_per_sec": r["steady_tasks_per_sec"],
            "steps_per_sec": r["steady_tasks_per_sec"] / params["meta_batch"],
            # The longest single compile: the training program's.
            "compile_s": max(r["compiles"], default=None),
            "xla_compile_s_total": sum(r["compiles"]),
            "train_and_evaluate_s": r["wall_s"],
        }
        if "data_sec_per_step" in steady[0]:  # the host feed's (not with device placement)
            for key in ("data_sec_per_step", "data_wait_sec_per_step"):
                record[key] = statistics.median(x[key] for x in steady)
    record.update(bench_record.environment(), **bench_record.peak_memory(), params=params)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
