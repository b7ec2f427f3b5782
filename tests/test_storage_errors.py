"""Full disk and unwritable storage: a failed write stops the run in one line, nothing lost.

The failing runs go through the real command line in a child process whose writes fail
past a size limit (EFBIG, as ENOSPC on a full disk; `tests/write_limit.py`).
"""

import errno
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import ROOT, run_module

from maml_dist import storage
from maml_dist.metrics import read_jsonl

TINY = f"--config={ROOT / 'configs' / 'sinusoid.py'}:tiny"
TIMINGS = ("tasks_per_sec", "sec_per_step")


def _run_limited(*args, timeout=120):
    """`tests/write_limit.py args` as `run_module` runs an entry point."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "write_limit.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    return proc, [line for line in proc.stderr.splitlines() if ": error: " in line]


def _records(workdir):
    return [
        {k: v for k, v in r.items() if k not in TIMINGS}
        for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    ]


def _restore(workdir, step):
    with ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints"), item_handlers=ocp.StandardCheckpointHandler()
    ) as manager:
        return manager.restore(step)


def _same_tree(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted tiny run through the command line: checkpoints at 100 and 200."""
    workdir = tmp_path_factory.mktemp("straight") / "run"
    proc, _ = run_module("maml_dist.train", TINY, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return str(workdir)


def test_a_failed_checkpoint_write_stops_in_one_line_and_a_restart_resumes(straight, tmp_path):
    workdir = str(tmp_path / "run")
    ckpts = os.path.join(workdir, "checkpoints")
    proc, errors = _run_limited("checkpoint", "200", "4096", "--", TINY, f"--workdir={workdir}")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert len(errors) == 1, proc.stderr[-3000:]
    line = errors[0]
    assert line.startswith(
        f"maml_dist.train: error: cannot write checkpoint 200 to "
        f"{os.path.join(ckpts, '200')!r} (ValueError: "
    ), line
    assert "[Errno 27] File too large); " in line
    assert line.endswith(
        f"checkpoint 100 in {ckpts!r} is intact; free space or make the workdir writable, "
        f"then run the same command to resume from step 100"
    ), line
    assert "Traceback" not in proc.stderr
    # The half-written step stays under orbax's temporary name, never taken for a checkpoint.
    assert sorted(os.listdir(ckpts)) == ["100", "200.orbax-checkpoint-tmp"]
    _same_tree(_restore(workdir, 100), _restore(straight, 100))

    # With room again, the same command resumes from 100 and ends as the straight run.
    proc, errors = run_module("maml_dist.train", TINY, f"--workdir={workdir}")
    assert proc.returncode == 0 and not errors, proc.stderr[-3000:]
    assert "resumed from step 100" in proc.stderr
    assert sorted(os.listdir(ckpts)) == ["100", "200"]
    assert _records(workdir) == _records(straight)
    _same_tree(_restore(workdir, 200), _restore(straight, 200))


def test_a_failed_metrics_write_stops_naming_metrics_jsonl(straight, tmp_path):
    workdir = str(tmp_path / "run")
    ckpts = os.path.join(workdir, "checkpoints")
    proc, errors = _run_limited("metrics", "100", "--", TINY, f"--workdir={workdir}")
    assert proc.returncode == 1, proc.stderr[-3000:]
    metrics = os.path.join(workdir, "metrics.jsonl")
    assert errors == [
        f"maml_dist.train: error: cannot write metrics to {metrics!r} (OSError: [Errno 27] "
        f"File too large); checkpoint 100 in {ckpts!r} is intact; free space or make the "
        f"workdir writable, then run the same command to resume from step 100"
    ], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert sorted(os.listdir(ckpts)) == ["100"]
    assert [r["step"] for r in read_jsonl(metrics)] == list(range(10, 101, 10))
    _same_tree(_restore(workdir, 100), _restore(straight, 100))


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), True),
        (PermissionError(errno.EACCES, os.strerror(errno.EACCES)), True),
        (
            ValueError("OUT_OF_RANGE: Failed writing: x: No space left [os_error_code='28']"),
            True,
        ),
        (ValueError("Destination /x/200 already exists."), False),
        (KeyError("step"), False),
    ],
)
def test_storage_errors_are_told_from_other_errors(error, expected):
    assert storage.is_storage_error(error) == expected


def test_a_long_tensorstore_error_keeps_the_os_reason():
    error = ValueError("OUT_OF_RANGE: Error writing " + "x" * 1000 + " [os_error_code='28']")
    text = storage.describe(error)
    assert len(text) <= 400
    assert text.startswith("ValueError: OUT_OF_RANGE: Error writing xxx")
    assert text.endswith("... [Errno 28] No space left on device")
