"""config.cpu_threads: XLA's CPU thread pool, sized before JAX starts its backend."""

import json
import logging
import os
import subprocess
import sys

import jax
import pytest
from helpers import ROOT, tiny_config
from ml_collections import ConfigDict

from maml_dist import checks, cpu_threads, resume_checks
from maml_dist.errors import UserInputError

# Starts JAX with `threads`, runs a program and prints how many pool threads XLA made.
_COUNT_POOL = """
import os, sys
from maml_dist import cpu_threads
cpu_threads.apply(int(sys.argv[1]))
import jax, jax.numpy as jnp
(jnp.ones((64, 64)) @ jnp.ones((64, 64))).block_until_ready()
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
print(names.count("tf_XLAEigen"))
"""


@pytest.mark.parametrize("bad", [-1, 257, 1.5, True, "2", None])
def test_a_bad_value_is_named_with_its_fix(bad):
    message = r"config.cpu_threads must be an integer from 0 to 256 .*--config.cpu_threads=1"
    with pytest.raises(UserInputError, match=message):
        cpu_threads.apply(bad)
    with pytest.raises(UserInputError, match=message):
        checks.validate_config(ConfigDict({**tiny_config().to_dict(), "cpu_threads": bad}))


def test_zero_leaves_xla_default(monkeypatch):
    monkeypatch.delenv(cpu_threads.ENV, raising=False)
    assert cpu_threads.apply(0) is False
    assert cpu_threads.ENV not in os.environ


def test_too_late_is_an_error_or_a_warning_never_a_silent_no_op(monkeypatch, caplog):
    jax.devices()  # this process's backend has started
    monkeypatch.delenv(cpu_threads.ENV, raising=False)
    with pytest.raises(UserInputError, match=r"before the first JAX computation"):
        cpu_threads.apply(3)
    # Set after the start, the variable changes nothing: still not in effect.
    monkeypatch.setenv(cpu_threads.ENV, "3")
    with pytest.raises(UserInputError, match=r"cannot take effect"):
        cpu_threads.apply(3)
    with caplog.at_level(logging.WARNING):
        assert cpu_threads.apply(3, strict=False) is False
    assert "config.cpu_threads=3 cannot take effect" in caplog.text


def test_runs_that_may_start_an_accelerator_keep_its_host_threads(monkeypatch):
    # An accelerator client reads the same variable for its host threads.
    monkeypatch.delenv(cpu_threads.ENV, raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert cpu_threads.accelerators() == "cuda"
    assert cpu_threads.apply(1) is False
    assert cpu_threads.ENV not in os.environ
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert cpu_threads.accelerators() is None


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
@pytest.mark.parametrize("threads", [1, 3])
def test_xla_makes_the_pool_it_is_asked_for(threads):
    # Fails if XLA stops reading PJRT_NPROC (xla/pjrt/utils.cc, for the CPU client).
    unset = ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES", cpu_threads.ENV, "NPROC")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", _COUNT_POOL, str(threads)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) == threads


def test_a_run_is_evaluated_with_its_own_pool(tmp_path):
    assert cpu_threads.of_run(str(tmp_path)) == 0  # no run here yet: the evaluator says so
    (tmp_path / "config.json").write_text(json.dumps({"cpu_threads": 1}))
    assert cpu_threads.of_run(str(tmp_path)) == 1
    (tmp_path / "config.json").write_text(json.dumps({"seed": 0}))  # before cpu_threads
    assert cpu_threads.of_run(str(tmp_path)) == 0
    (tmp_path / "config.json").write_text(json.dumps({"cpu_threads": "1"}))
    with pytest.raises(UserInputError, match=r"cpu_threads in .*config.json must be an integ"):
        cpu_threads.of_run(str(tmp_path))


def test_a_run_resumes_on_another_pool():
    saved = json.loads(tiny_config(cpu_threads=1).to_json())
    resume_checks.check_resume_compatible(saved, tiny_config(cpu_threads=0))
    resume_checks.check_resume_compatible(
        {k: v for k, v in saved.items() if k != "cpu_threads"}, tiny_config()
    )
