"""scripts/benchmark.py writes one complete, well-typed JSON record per setting."""

import json
import os
import pathlib
import subprocess
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import bench_trainer_log  # noqa: E402  (scripts/ is no package)

VERSIONS = ("python", "jax", "jaxlib", "flax", "optax", "maml_dist")
PARTS = ("startup_s", "compile_s", "steps_s", "eval_s", "checkpoint_s", "shutdown_s")


def _quick_benchmark(tmp_path, timeout: int, *flags: str) -> list[dict]:
    """Runs `scripts/benchmark.py --quick FLAGS` on one CPU device; returns its records."""
    out = tmp_path / "bench.jsonl"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, "scripts/benchmark.py", "--quick", *flags, f"--out={out}"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_quick_sinusoid_record_has_every_field(tmp_path):
    (record,) = _quick_benchmark(
        tmp_path, 240, "--settings=sinusoid_paper", f"--workdir_root={tmp_path / 'runs'}"
    )
    assert record["error"] is None, record["error"]
    assert record["setting"] == "sinusoid_paper" and record["quick"] is True
    assert record["platform"] == "cpu" and isinstance(record["device_kind"], str)
    assert record["device_count"] == 1 and record["process_count"] == 1
    assert all(isinstance(record["versions"][k], str) for k in VERSIONS), record["versions"]
    for key in ("steps_per_sec", "tasks_per_sec", "compile_s", "wall_s", *PARTS):
        assert isinstance(record[key], float) and record[key] >= 0, key
    assert record["steps_per_sec"] > 0 and record["compile_s"] > 0
    # tasks/s is the same logged intervals' steps/s times the meta-batch.
    assert record["tasks_per_sec"] == pytest.approx(25 * record["steps_per_sec"])
    assert isinstance(record["peak_memory_bytes"], int) and record["peak_memory_bytes"] > 2**20
    assert record["peak_memory_source"] == "host_peak_rss"
    assert record["params"]["num_steps"] == 1000 and record["params"]["compile_cache"] == "empty"
    assert (record["evals"], record["checkpoints"]) == (2, 2)
    assert record["compile_cache_hit"] is False  # a fresh cache folder
    # The parts are contiguous spans of the one process.
    assert sum(record[k] for k in PARTS) == pytest.approx(record["wall_s"], abs=1e-3)


def _log(*lines):
    return "\n".join(f"I1129 00:00:{t:09.6f} 1 trainer.py:1] {msg}" for t, msg in lines)


def test_trainer_log_parts_add_up_and_a_missing_mark_fails():
    started = bench_trainer_log.lines(_log((0, "x")), 0)[0][0] - 1.0  # 1 s before the log
    text = _log(
        (0.5, "JAX 0.10.2, process 0 of 1"),
        (2.0, "compiling the meta-step..."),
        # The validation programs compile beside the meta-step, in another thread.
        (3.0, "Finished XLA compilation of jit(sample) in 0.5 sec"),
        (5.0, "Finished XLA compilation of jit(run) in 2.5 sec"),
        (6.0, "validated at step 5 in 0.750 s"),
        (7.0, "checkpoint of step 5 started in 0.250 s"),
        (9.0, "checkpoint writes finished after 1.000 s more"),
    )
    parts = bench_trainer_log.parts(text, started, wall_s=11.0)
    assert parts["startup_s"] == pytest.approx(3.0)
    assert parts["compile_s"] == pytest.approx(3.0)
    assert parts["eval_s"] == pytest.approx(0.75)
    assert parts["checkpoint_s"] == pytest.approx(1.25)
    assert parts["steps_s"] == pytest.approx(3.0 - 0.75 - 0.25)
    assert parts["shutdown_s"] == pytest.approx(1.0)
    assert sum(parts[k] for k in PARTS) == pytest.approx(11.0)
    with pytest.raises(ValueError, match="compile start"):
        bench_trainer_log.parts(text.replace("compiling the meta-step", "x"), started, 11.0)


def test_quick_bare_loop_records_repeat_and_split_the_wall_time(tmp_path):
    records = _quick_benchmark(tmp_path, 120, "--settings=sinusoid_bare_loop", "--repeat=2")
    assert [r["repeat"] for r in records] == [0, 1]
    for record in records:
        assert record["error"] is None, record["error"]
        assert record["setting"] == "sinusoid_bare_loop" and record["quick"] is True
        assert record["platform"] == "cpu" and record["device_count"] == 1
        assert all(isinstance(record["versions"][k], str) for k in VERSIONS)
        for key in ("steps_per_sec", "compile_s", "wall_s", "sample_s", "call_s", *PARTS):
            assert isinstance(record[key], float) and record[key] >= 0, key
        assert record["tasks_per_sec"] == pytest.approx(25 * record["steps_per_sec"])
        assert record["params"]["variant"] == "host"
        assert record["params"]["num_steps"] == 1000
        assert (record["params"]["meta_batch_size"], record["params"]["shots"]) == (25, 10)
        assert record["peak_memory_source"] == "host_peak_rss"
        assert record["final_loss"] > 0 and "paper_vs_bare" not in record
        assert sum(record[k] for k in PARTS) == pytest.approx(record["wall_s"], abs=1e-3)


def test_paper_vs_bare_pairs_the_records_of_one_repetition():
    import benchmark

    def run(repeat, records):
        args = types.SimpleNamespace(quick=False)
        return types.SimpleNamespace(run_id="x", args=args, env={}, records=records, repeat=repeat)

    bare = {"setting": "sinusoid_bare_loop", "repeat": 0, "wall_s": 40.0, "error": None}
    paper = benchmark._complete(run(0, {"sinusoid_bare_loop": bare}), "sinusoid_paper", {}, 30.0)
    assert paper["paper_vs_bare"] == pytest.approx(0.75)
    # The bare loop finishing second holds the same ratio.
    later = benchmark._complete(run(0, {"sinusoid_paper": paper}), "sinusoid_bare_loop", {}, 40.0)
    assert later["paper_vs_bare"] == pytest.approx(0.75)
    # Another repetition's record, or a failed one, is no pair.
    assert "paper_vs_bare" not in benchmark._complete(
        run(1, {"sinusoid_bare_loop": bare}), "sinusoid_paper", {}, 30.0
    )
    failed = {**bare, "error": "killed"}
    assert "paper_vs_bare" not in benchmark._complete(
        run(0, {"sinusoid_bare_loop": failed}), "sinusoid_paper", {}, 30.0
    )
