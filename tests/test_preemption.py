"""Preemption: SIGTERM saves a checkpoint at the step reached, exits 0, and a restart matches.

Every child runs under a deadline and is SIGKILLed past it, so a hung test cannot hang CI
(after jax.distributed starts JAX catches SIGTERM, README trap 3).
"""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from maml_dist.checkpointing import Checkpointer

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = f"--config={ROOT / 'configs' / 'sinusoid.py'}:tiny"
TIMINGS = {"tasks_per_sec", "sec_per_step", "learning_rate"}
DEADLINE = 180


def _args(workdir, num_steps):
    return [
        TINY,
        f"--workdir={workdir}",
        f"--config.num_steps={num_steps}",
        "--config.log_every=100",
        "--config.eval_every=5000",
        "--config.checkpoint_every=5000",
        "--config.task_batching=loop",
        "--config.reduction=ordered",
    ]


class _Child:
    """`python -m maml_dist.train ...` whose stderr is collected line by line as it comes."""

    def __init__(self, args, extra_env=None):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", **(extra_env or {})}
        env.pop("XLA_FLAGS", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "maml_dist.train", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, text, timeout=DEADLINE):
        end = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > end:
                self.kill()
                pytest.fail(f"never logged {text!r}:\n{''.join(self.lines)[-3000:]}")
            time.sleep(0.05)

    def finish(self, timeout=DEADLINE):
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"did not exit within {timeout} s:\n{''.join(self.lines)[-3000:]}")
        self._reader.join(timeout=10)
        return self.proc.returncode, "".join(self.lines)

    def kill(self):
        self.proc.kill()
        self.proc.wait()


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


def _stopped_step(log):
    found = re.search(r"stopped by SIGTERM at step (\d+) of (\d+) with a checkpoint there", log)
    assert found, log[-3000:]
    return int(found.group(1))


def test_sigterm_saves_at_the_step_reached_and_the_restart_matches(tmp_path):
    steps = 20000
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    child = _Child(_args(stopped, steps))
    child.wait_for("compiled the meta-step")
    time.sleep(1.0)
    sent = time.monotonic()
    child.proc.send_signal(signal.SIGTERM)
    rc, log = child.finish(timeout=30)
    took = time.monotonic() - sent
    assert rc == 0, log[-3000:]
    assert took < 30
    step = _stopped_step(log)
    assert 0 < step < steps
    ckpt = Checkpointer(str(stopped / "checkpoints"), max_to_keep=3, create=False)
    try:
        assert ckpt.latest_step() == step
    finally:
        ckpt.close()
    assert _records(stopped)[-1]["step"] == step  # its record was written before its save

    rc, log = _Child(_args(stopped, steps)).finish()
    assert rc == 0 and f"resumed from step {step}" in log, log[-3000:]
    rc, log = _Child(_args(reference, steps)).finish()
    assert rc == 0, log[-3000:]
    assert _records(stopped) == _records(reference)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path):
    steps = 1500  # gloo across two processes: about 80 steps/s on this CPU
    workdir = tmp_path / "two"

    def start():
        port = _free_port()
        return [
            _Child(
                [
                    *_args(workdir, steps),
                    f"--coordinator_address=127.0.0.1:{port}",
                    "--num_processes=2",
                    f"--process_id={i}",
                    "--cpu_devices=4",
                ]
            )
            for i in range(2)
        ]

    children = start()
    children[0].wait_for("compiled the meta-step")
    time.sleep(1.0)
    children[1].proc.send_signal(signal.SIGTERM)  # only one process hears it
    results = [c.finish(timeout=60) for c in children]
    for rc, log in results:
        assert rc == 0, log[-3000:]
    step = _stopped_step(results[0][1])
    assert _stopped_step(results[1][1]) == step  # both saved the same step
    assert 0 < step < steps
    results = [c.finish() for c in start()]
    for rc, log in results:
        assert rc == 0 and f"resumed from step {step}" in log, log[-3000:]
    # One process with the 8 devices, uninterrupted: the same records (deterministic mode).
    rc, log = _Child([*_args(tmp_path / "one", steps), "--cpu_devices=8"]).finish()
    assert rc == 0, log[-3000:]
    assert _records(workdir) == _records(tmp_path / "one")
