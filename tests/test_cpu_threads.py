"""config.cpu_threads: XLA's CPU thread pool, sized before JAX starts its backend."""

import json
import os
import subprocess
import sys

import jax
import pytest
from helpers import ROOT, tiny_config

from maml_dist import checks, cpu_threads
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


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2", None])
def test_a_bad_value_is_named_with_its_fix(bad):
    with pytest.raises(UserInputError, match=r"config.cpu_threads must be an integer >= 0"):
        cpu_threads.apply(bad)


def test_zero_leaves_xla_default(monkeypatch):
    monkeypatch.delenv(cpu_threads.ENV, raising=False)
    assert cpu_threads.apply(0) is False
    assert cpu_threads.ENV not in os.environ


def test_too_late_is_an_error_not_a_silent_no_op(monkeypatch):
    jax.devices()  # this process's backend has started
    monkeypatch.delenv(cpu_threads.ENV, raising=False)
    with pytest.raises(UserInputError, match=r"before the first JAX computation"):
        cpu_threads.apply(3)
    monkeypatch.setenv(cpu_threads.ENV, "3")
    assert cpu_threads.apply(3) is True  # already in effect: nothing to change


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
@pytest.mark.parametrize("threads", [1, 3])
def test_xla_makes_the_pool_it_is_asked_for(threads):
    # Fails if XLA stops reading PJRT_NPROC (it is read in xla/pjrt/cpu/cpu_client.cc).
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", cpu_threads.ENV)}
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


def test_a_run_resumes_on_another_pool():
    saved = json.loads(tiny_config(cpu_threads=1).to_json())
    checks.check_resume_compatible(saved, tiny_config(cpu_threads=0))
    checks.check_resume_compatible(
        {k: v for k, v in saved.items() if k != "cpu_threads"}, tiny_config()
    )
