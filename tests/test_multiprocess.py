"""Several processes on 127.0.0.1 train exactly what one process would.

Every child has a hard deadline and is killed with SIGKILL (JAX catches SIGTERM once
jax.distributed is up, README trap 3), so these tests cannot hang CI.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import make_omniglot_set, tiny_config

from configs import omniglot as omniglot_configs
from maml_dist import evaluator, trained_run, trainer
from maml_dist.metrics import read_jsonl

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = f"--config={ROOT / 'configs' / 'sinusoid.py'}:tiny"
DETERMINISTIC = {"task_batching": "loop", "reduction": "ordered"}
DEADLINE = 240


def _env(**extra):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHON": sys.executable, **extra}
    env.pop("XLA_FLAGS", None)
    return env


def _local(num, per, *args, module="maml_dist.train"):
    """launch/local.sh NUM PER -- args; the whole process group is SIGKILLed on timeout."""
    proc = subprocess.Popen(
        ["bash", str(ROOT / "launch" / "local.sh"), str(num), str(per), "--", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=_env(MODULE=module, DEADLINE=str(DEADLINE)),
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=DEADLINE + 30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"launch/local.sh hung past its deadline:\n{err[-3000:]}")
    return proc.returncode, out, err


def _overrides(**fields):
    return [f"--config.{k}={v}" for k, v in fields.items()]


def _losses(workdir):
    return [(r["step"], r["meta_loss"]) for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


def _params(workdir, step):
    config = trained_run.load_run_config(workdir)
    params, _ = trained_run.restore_params(config, workdir, step)
    return jax.device_get(params)


def _assert_same_run(workdir, reference):
    """Same logged losses and the same final (step 60) parameters, bit for bit."""
    assert _losses(workdir) == _losses(reference)
    for a, b in zip(
        jax.tree.leaves(_params(workdir, 60)),
        jax.tree.leaves(_params(reference, 60)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def one_by_eight(tmp_path_factory):
    """Reference: 1 process x 8 devices, 60 steps, deterministic mode."""
    workdir = str(tmp_path_factory.mktemp("one_by_eight"))
    trainer.train_and_evaluate(tiny_config(num_steps=60, **DETERMINISTIC), workdir)
    return workdir


@pytest.fixture(scope="module")
def two_by_four(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("two_by_four"))
    rc, _, err = _local(
        2, 4, TINY, f"--workdir={workdir}", *_overrides(num_steps=60, **DETERMINISTIC)
    )
    assert rc == 0, err[-3000:]
    return workdir


def test_two_processes_equal_one_process_bit_for_bit(one_by_eight, two_by_four):
    assert len(_losses(two_by_four)) == 6
    _assert_same_run(two_by_four, one_by_eight)
    # Only process 0 writes the run files; every process logs.
    logs = sorted(os.listdir(os.path.join(two_by_four, "logs")))
    assert logs == ["process_0.log", "process_1.log"]


def test_two_processes_default_mode_match_to_float_tolerance(tmp_path):
    single = str(tmp_path / "single")
    trainer.train_and_evaluate(tiny_config(num_steps=60), single)
    multi = str(tmp_path / "multi")
    rc, _, err = _local(2, 4, TINY, f"--workdir={multi}", "--config.num_steps=60")
    assert rc == 0, err[-3000:]
    a, b = _losses(single), _losses(multi)
    assert [s for s, _ in a] == [s for s, _ in b]
    np.testing.assert_allclose([x for _, x in b], [x for _, x in a], rtol=1e-5)


@pytest.mark.parametrize("first", ["2x4", "1x8", "1x1"])
def test_resume_across_topologies(first, one_by_eight, tmp_path):
    """30 steps on one topology, 30 more on another, equal to 60 straight on 1 x 8."""
    workdir = str(tmp_path)
    half = tiny_config(num_steps=30, **DETERMINISTIC)
    if first == "2x4":
        rc, _, err = _local(
            2, 4, TINY, f"--workdir={workdir}", *_overrides(num_steps=30, **DETERMINISTIC)
        )
        assert rc == 0, err[-3000:]
    else:
        devices = jax.devices()[: 8 if first == "1x8" else 1]
        trainer.train_and_evaluate(half, workdir, devices=devices)
    if first == "2x4":
        trainer.train_and_evaluate(tiny_config(num_steps=60, **DETERMINISTIC), workdir)
    else:
        rc, _, err = _local(
            2, 4, TINY, f"--workdir={workdir}", *_overrides(num_steps=60, **DETERMINISTIC)
        )
        assert rc == 0, err[-3000:]
    _assert_same_run(workdir, one_by_eight)


def test_evaluate_across_two_processes_matches_one(two_by_four):
    kwargs = dict(num_tasks=40, shots=(5, 10), max_inner_steps=3)
    single = evaluator.evaluate(two_by_four, **kwargs)
    rc, out, err = _local(
        2,
        4,
        f"--workdir={two_by_four}",
        "--num_tasks=40",
        "--shots=5,10",
        "--max_inner_steps=3",
        module="maml_dist.evaluate",
    )
    assert rc == 0, err[-3000:]
    assert "query mse (mean ± 95% CI) over 40 test tasks" in err + out
    with open(os.path.join(two_by_four, "eval", "results.json")) as f:
        multi = json.load(f)
    assert multi["results"] == single["results"]


def test_local_sh_stops_all_and_fails_when_one_fails(tmp_path):
    rc, _, err = _local(2, 1, TINY, f"--workdir={tmp_path}", "--config.num_steps=0")
    assert rc == 2
    assert "exited with status 2" in err


def test_a_lost_process_is_named_and_the_survivor_exits(tmp_path):
    port = 20000 + os.getpid() % 20000
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "maml_dist.train",
                TINY,
                f"--workdir={tmp_path}",
                "--config.num_steps=1000000",
                "--config.checkpoint_every=1000000",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
                "--cpu_devices=4",
                "--heartbeat_timeout=10",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=_env(),
        )
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 120
        while (
            not (tmp_path / "metrics.jsonl").exists()
            or not (tmp_path / "metrics.jsonl").read_text().strip()
        ):
            assert time.monotonic() < deadline, "training never started"
            assert procs[0].poll() is None, procs[0].stderr.read()[-3000:]
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        procs[1].wait()  # reap it, as a launcher would
        _, err = procs[0].communicate(timeout=60)
        elapsed = time.monotonic() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
    assert procs[0].returncode != 0
    assert elapsed < 60
    errors = [line for line in err.splitlines() if "maml_dist.train: error:" in line]
    assert len(errors) == 1, err[-3000:]
    assert "lost process 1 of 2; process 0 stops" in errors[0]


def test_two_processes_feed_omniglot_like_one(tmp_path):
    """Each process samples only its devices' episodes; together they train what one does."""
    data = tmp_path / "data"
    make_omniglot_set(data, "images_background_small1", {"Alpha": 3, "Beta": 3})
    make_omniglot_set(data, "images_background_small2", {"Gamma": 3})
    fields = {
        "data_dir": str(data),
        "omniglot.cache_dir": str(tmp_path / "cache"),
        "omniglot.held_out": "('Gamma',)",
        **DETERMINISTIC,
    }
    config = omniglot_configs.get_config("tiny")
    config.update_from_flattened_dict(
        {**fields, "omniglot.held_out": ("Gamma",), "omniglot.num_held_out": 0}
    )
    single = str(tmp_path / "single")
    trainer.train_and_evaluate(config, single, jax.devices()[:4])
    multi = str(tmp_path / "multi")
    rc, _, err = _local(
        2,
        2,
        f"--config={ROOT / 'configs' / 'omniglot.py'}:tiny",
        f"--workdir={multi}",
        *_overrides(**fields, **{"omniglot.num_held_out": 0}),
    )
    assert rc == 0, err[-3000:]
    assert _losses(multi) == _losses(single) and len(_losses(single)) == 4
    for a, b in zip(
        jax.tree.leaves(_params(multi, 6)), jax.tree.leaves(_params(single, 6)), strict=True
    ):
        np.testing.assert_array_equal(a, b)
