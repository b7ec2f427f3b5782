"""The real training loop on the tiny config: files, TensorBoard, resume, device counts."""

import json
import os
import struct

import chex
import jax
import numpy as np
import pytest
from helpers import tiny_config
from tensorboardX.proto import event_pb2

from maml_dist import (
    device_run,
    meta_objective,
    meta_update,
    nonfinite,
    parallel,
    plotting,
    preflight,
    resume_checks,
    trainer,
)
from maml_dist import state as state_lib
from maml_dist.errors import UserInputError
from maml_dist.metrics import read_jsonl
from maml_dist.problem import make_problem


def _read_events(tb_dir):
    """All tensorboard events in `tb_dir`: (tag, kind) pairs, from the TFRecord framing.

    The kind is "image", "scalar", or the plugin's name for plugin data (hparams).
    """
    found = set()
    for name in os.listdir(tb_dir):
        if os.path.isdir(os.path.join(tb_dir, name)):
            continue
        with open(os.path.join(tb_dir, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                kind = "image" if value.HasField("image") else plugin or "scalar"
                found.add((value.tag, kind))
    return found


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("tiny"))
    state = trainer.train_and_evaluate(tiny_config(), workdir)
    return workdir, state


def test_writes_the_workdir_contract(tiny_run):
    workdir, state = tiny_run
    config = tiny_config()
    assert int(state.step) == config.num_steps
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["meta_batch_size"] == config.meta_batch_size
    records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in records] == list(range(10, 201, 10))
    for r in records:
        assert {"step", "meta_loss", "loss_before", "tasks_per_sec", "sec_per_step"} <= set(r)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["100", "200"]

    events = _read_events(os.path.join(workdir, "tb"))
    for tag in [
        "train/meta_loss",
        "train/loss_before",
        "train/learning_rate",
        "perf/tasks_per_sec",
        "perf/sec_per_step",
        "eval/mse_after_0_steps",
        "eval/mse_after_3_steps",
    ]:
        assert (tag, "scalar") in events, tag
    assert ("eval/adaptation", "image") in events
    # The config and final validation metrics, for TensorBoard's HParams view.
    hparams = _read_events(os.path.join(workdir, "tb", "hparams"))
    assert {("_hparams_/experiment", "hparams"), ("_hparams_/session_start_info", "hparams")} <= (
        hparams
    )
    assert ("eval/mse_after_3_steps", "scalar") in hparams


def test_a_failed_validation_image_stops_the_run_with_its_error(tmp_path, monkeypatch):
    # Images are drawn in a thread beside the training: what fails there is not lost.
    def fail(*args, **kwargs):
        raise RuntimeError("the figure could not be drawn")

    monkeypatch.setattr(plotting.AdaptationFigure, "image", fail)
    config = tiny_config(num_steps=40, eval_every=10)
    with pytest.raises(RuntimeError, match="the figure could not be drawn"):
        trainer.train_and_evaluate(config, str(tmp_path))
    # Step 10's image failed; the run stopped at a later chunk, its records flushed.
    steps = [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))]
    assert steps[0] == 10 and steps[-1] < 40, steps


def test_loss_falls(tiny_run):
    workdir, _ = tiny_run
    evals = [
        r
        for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
        if "eval_mse_after_1_steps" in r
    ]
    assert [r["step"] for r in evals] == [50, 100, 150, 200]
    # Same fixed validation tasks each time, so the drop is training, not sampling noise.
    assert evals[-1]["eval_mse_after_1_steps"] < 0.85 * evals[0]["eval_mse_after_1_steps"]


def test_resume_continues_bit_identically(tiny_run, tmp_path):
    _, straight = tiny_run
    workdir = str(tmp_path)
    trainer.train_and_evaluate(tiny_config(num_steps=100), workdir)
    resumed = trainer.train_and_evaluate(tiny_config(), workdir)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    straight_records = read_jsonl(os.path.join(tiny_run[0], "metrics.jsonl"))
    assert [r["step"] for r in records] == [r["step"] for r in straight_records]
    assert [r["meta_loss"] for r in records] == [r["meta_loss"] for r in straight_records]


def test_resume_drops_records_logged_after_the_checkpoint(tmp_path):
    workdir = str(tmp_path)
    trainer.train_and_evaluate(tiny_config(num_steps=100), workdir)
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:  # an interrupted run's tail
        f.write(json.dumps({"step": 110, "meta_loss": 1.0}) + "\n")
    trainer.train_and_evaluate(tiny_config(num_steps=120), workdir)
    steps = [r["step"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]
    assert steps == list(range(10, 121, 10))


def test_eight_devices_match_one_device_with_padding(tmp_path):
    # The paper's meta-batch 25 on 8 devices (padded to 32) against 1 device, step for step.
    config = tiny_config(meta_batch_size=25, pad_meta_batch=True, num_steps=60)
    one = trainer.train_and_evaluate(config, str(tmp_path / "one"), devices=jax.devices()[:1])
    eight = trainer.train_and_evaluate(config, str(tmp_path / "eight"))
    losses = [
        [r["meta_loss"] for r in read_jsonl(str(tmp_path / name / "metrics.jsonl"))]
        for name in ("one", "eight")
    ]
    assert len(losses[0]) == 6
    # Reduction order differs (per device, then across devices); Adam amplifies ulps a little
    # over 60 steps, still orders of magnitude below a wrong objective.
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
    for a, b in zip(
        jax.tree.leaves(one.meta_params), jax.tree.leaves(eight.meta_params), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-5)


def test_deterministic_mode_is_bit_identical_on_one_and_eight_devices(tmp_path):
    config = tiny_config(
        meta_batch_size=25,
        pad_meta_batch=True,
        num_steps=60,
        task_batching="loop",
        reduction="ordered",
    )
    one = trainer.train_and_evaluate(config, str(tmp_path / "one"), devices=jax.devices()[:1])
    eight = trainer.train_and_evaluate(config, str(tmp_path / "eight"))
    records = [read_jsonl(str(tmp_path / name / "metrics.jsonl")) for name in ("one", "eight")]
    for key in ("meta_loss", "loss_before", "eval_mse_after_1_steps"):
        assert [r.get(key) for r in records[0]] == [r.get(key) for r in records[1]], key
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("algorithm", ["fomaml", "metasgd", "anil", "reptile", "imaml", "mamlpp"])
def test_every_algorithm_trains_identically_on_one_and_eight_devices(tmp_path, algorithm):
    config = tiny_config(
        algorithm=algorithm,
        inner_steps=3,
        meta_batch_size=25,
        pad_meta_batch=True,
        num_steps=60,
        eval_every=60,
        checkpoint_every=60,
        task_batching="loop",
        reduction="ordered",
        meta_lr=1e-3,  # the paper's; the tiny config's 1e-2 sends Meta-SGD's rates to NaN
    )
    trainer.train_and_evaluate(config, str(tmp_path / "one"), devices=jax.devices()[:1])
    trainer.train_and_evaluate(config, str(tmp_path / "eight"))
    records = [read_jsonl(str(tmp_path / name / "metrics.jsonl")) for name in ("one", "eight")]
    for key in ("meta_loss", "loss_before", "eval_mse_after_3_steps"):
        assert [r.get(key) for r in records[0]] == [r.get(key) for r in records[1]], key
    # Whether each one learns is measured on the paper config (README, "Algorithms"): 60
    # tiny steps are too few to show it for ANIL's head or iMAML's proximal steps.
    assert len(records[0]) == 6 and all(np.isfinite(r["loss_before"]) for r in records[0])


def test_resume_is_bit_identical_with_learned_learning_rates(tmp_path):
    fields = {"algorithm": "metasgd", "checkpoint_every": 30, "eval_every": 30}
    config = tiny_config(num_steps=60, **fields)
    straight = trainer.train_and_evaluate(config, str(tmp_path / "straight"))
    trainer.train_and_evaluate(tiny_config(num_steps=30, **fields), str(tmp_path / "r"))
    resumed = trainer.train_and_evaluate(config, str(tmp_path / "r"))
    assert set(resumed.meta_params) == {"params", "inner_lr"}
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The rates were learned, not left at their initial value.
    rates = np.concatenate([np.ravel(x) for x in jax.tree.leaves(resumed.meta_params["inner_lr"])])
    assert np.ptp(rates) > 0


def _device_run():
    """The tiny config's `DeviceRun` on one device, a maker of its initial state, and parts."""
    config = tiny_config()
    problem = make_problem(config)
    mesh = parallel.make_mesh(jax.devices()[:1])
    tx, _ = state_lib.make_meta_optimizer(config)
    spec = meta_objective.meta_batch_spec(config, problem)
    step = meta_update.make_train_step(
        parallel.make_meta_grad_fn(spec, mesh), tx, nonfinite.limit(config)
    )
    init = (problem.model, problem.family.example_input(), tx, config.seed, problem.algorithm)
    replicated = parallel.replicated(mesh)
    ahead = device_run.DeviceRun(
        config, problem, spec, mesh, step, state_lib.abstract_state(*init, replicated)
    )

    def new_state():
        return state_lib.init_state(*init, replicated)

    return ahead, new_state, (config, problem, spec, mesh, step)


def test_chunk_program_compiled_ahead_equals_the_jitted_one():
    # `device_run.DeviceRun` compiles its usual chunk length ahead from the state's shapes,
    # sampling and steps as two programs; they must train as `make_multi_step`'s one
    # program does, bit for bit, at that length and at another.
    ahead, new_state, (config, problem, spec, mesh, step) = _device_run()
    assert ahead.length == config.log_every
    # The sampler compiles in the caller's thread, once: `shorter` is set by it alone.
    assert not ahead.shorter.done()
    ahead.compile_sampler()
    assert ahead.shorter.done() and ahead.shorter.exception() is None
    ahead.compile_sampler()
    jitted = meta_update.make_multi_step(
        step, device_run.chunk_sampler(config, problem, spec, mesh)
    )
    a, b = new_state(), new_state()
    for n in (ahead.length, 3):  # the precompiled length, then one it compiles on use
        a, metrics_a = ahead(a, n)
        b, metrics_b = jitted(b, n)
        chex.assert_trees_all_equal((a, metrics_a), (b, metrics_b))
    assert int(a.step) == ahead.length + 3


def test_the_validation_starts_after_the_sampler_is_compiled(tmp_path, monkeypatch):
    # The validation's thread waits on `shorter`, which only `compile_sampler` resolves.
    start, seen = trainer.start_monitor, []

    def checked(config, problem, replicated, meta_params, after):
        seen.append(after is not None and after.done())
        return start(config, problem, replicated, meta_params, after)

    monkeypatch.setattr(trainer, "start_monitor", checked)
    trainer.train_and_evaluate(tiny_config(num_steps=20), str(tmp_path))
    assert seen == [True]


def test_a_failed_sampler_compile_is_raised_by_the_first_chunk(monkeypatch):
    ahead, new_state, _ = _device_run()

    class Broken:
        def lower(self, *args):
            raise RuntimeError("no sampler today")

    monkeypatch.setattr(ahead, "sample", Broken())
    ahead.compile_sampler()  # resolves `shorter`: nothing waiting on it can hang
    assert isinstance(ahead.shorter.exception(), RuntimeError)
    with pytest.raises(RuntimeError, match="no sampler today"):
        ahead(new_state(), ahead.length)


def test_vmap_groups_where_auto_runs_tasks_one_at_a_time_are_named(tmp_path, caplog):
    # On CPU "auto" is a loop: a config written for accelerators still runs, and says so.
    config = tiny_config(task_batching="auto", tasks_per_vmap=3)
    with caplog.at_level("WARNING"):
        preflight.check_inputs(config, str(tmp_path), 2)
    assert "config.tasks_per_vmap=3 has no effect on cpu" in caplog.text
    # Under vmap the same groups must divide a device's 8 tasks.
    config.task_batching = "vmap"
    with pytest.raises(UserInputError, match="does not divide the 8 tasks each device runs"):
        preflight.check_inputs(config, str(tmp_path), 2)


def test_a_run_resumes_with_other_vmap_groups():
    # Groups change memory and rounding, as another device count does, not the training.
    saved = json.loads(tiny_config(tasks_per_vmap=0).to_json())
    resume_checks.check_resume_compatible(saved, tiny_config(tasks_per_vmap=4))
    # A run saved before the field existed.
    older = {k: v for k, v in saved.items() if k != "tasks_per_vmap"}
    resume_checks.check_resume_compatible(older, tiny_config(tasks_per_vmap=2))
    with pytest.raises(UserInputError, match="different config"):
        resume_checks.check_resume_compatible(saved, tiny_config(tasks_per_vmap=4, inner_lr=0.5))
