"""Non-finite meta-steps: skipped on device, counted, and the run stopped with one line."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from helpers import ROOT, run_module, tiny_config
from test_trainer import _read_events

from maml_dist import meta_update, nonfinite, parallel, trainer
from maml_dist.metrics import read_jsonl
from maml_dist.state import TrainState

TINY = f"--config={ROOT / 'configs' / 'sinusoid.py'}:tiny"


def _state(tx, size=3):
    meta_params = {"params": {"w": jnp.ones(size)}}
    zero = jnp.zeros((), jnp.int32)
    return TrainState(zero, meta_params, tx.init(meta_params), zero, zero)


def _fake_grads(values):
    """A meta_grad_fn whose gradient at step s is `values[s]` (broadcast), loss 1."""
    table = jnp.asarray(values, jnp.float32)

    def meta_grad_fn(meta_params, step, tasks=None, measure=True, data=None):
        grads = jax.tree.map(lambda p: jnp.full_like(p, table[step]), meta_params)
        return grads, {"meta_loss": jnp.float32(1.0)}

    return meta_grad_fn


def _run(values, limit, size=3):
    """Each state after each step of the guarded train step (one jitted step at a time)."""
    tx = optax.adam(0.1)
    step = jax.jit(meta_update.make_train_step(_fake_grads(values), tx, limit))
    states, metrics = [_state(tx, size)], []
    for _ in values:
        state, m = step(states[-1])
        states.append(state)
        metrics.append(m)
    return states, metrics


def _same(a, b):
    return all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_a_nonfinite_step_leaves_parameters_and_optimiser_state_unchanged():
    states, metrics = _run([1.0, 2.0, np.nan, np.inf, 3.0, 4.0], limit=10)
    for bad in (3, 4):  # the states after the NaN and the inf step
        assert _same(states[bad].meta_params, states[2].meta_params)
        assert _same(states[bad].opt_state, states[2].opt_state)
    for good in (1, 2, 5, 6):
        assert not _same(states[good].meta_params, states[good - 1].meta_params)
    assert [int(s.step) for s in states] == [0, 1, 2, 3, 4, 5, 6]
    assert [int(m["skipped_steps"]) for m in metrics] == [0, 0, 1, 2, 2, 2]
    assert [int(m["nonfinite_in_row"]) for m in metrics] == [0, 0, 1, 2, 0, 0]
    assert all(bool(nonfinite.all_finite(s)) for s in states)


def test_a_finite_step_is_the_unguarded_update_bit_for_bit():
    states, _ = _run([1.0, 2.0], limit=1)
    tx = optax.adam(0.1)

    @jax.jit
    def unguarded(meta_params, opt_state, g):
        grads = jax.lax.optimization_barrier(
            jax.tree.map(lambda p: jnp.full_like(p, g), meta_params)
        )
        updates, opt_state = tx.update(grads, opt_state, meta_params)
        return optax.apply_updates(meta_params, updates), opt_state

    state = _state(tx)
    meta_params, opt_state = state.meta_params, state.opt_state
    for g in (1.0, 2.0):
        meta_params, opt_state = unguarded(meta_params, opt_state, g)
    assert _same(states[-1].meta_params, meta_params)
    assert _same(states[-1].opt_state, opt_state)


def test_large_finite_gradients_are_not_taken_for_non_finite():
    # 1e18 squared fits float32, but a 1000-element norm of it would overflow to inf.
    states, metrics = _run([1e18, 1.0], limit=1, size=1000)
    assert [int(m["skipped_steps"]) for m in metrics] == [0, 0]
    assert not _same(states[1].meta_params, states[0].meta_params)


def test_a_non_finite_loss_alone_is_skipped():
    tx = optax.adam(0.1)

    def meta_grad_fn(meta_params, step, tasks=None, measure=True, data=None):
        grads = jax.tree.map(jnp.ones_like, meta_params)
        return grads, {"meta_loss": jnp.where(step == 0, jnp.inf, 1.0)}

    state, m = jax.jit(meta_update.make_train_step(meta_grad_fn, tx, 5))(_state(tx))
    assert int(m["skipped_steps"]) == 1 and _same(state.meta_params, _state(tx).meta_params)


def test_after_the_limit_the_state_no_longer_changes():
    states, metrics = _run([1.0, np.nan, np.nan, 1.0, 1.0], limit=2)
    assert [int(s.step) for s in states] == [0, 1, 2, 3, 3, 3]
    assert _same(states[3], states[5])
    assert _same(states[3].meta_params, states[1].meta_params)
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *metrics)
    config = tiny_config(nonfinite="skip", nonfinite_max_skips=2)
    assert nonfinite.check_chunk(stacked, 0, config) == (2, 3)
    assert nonfinite.check_chunk(jax.tree.map(lambda x: x[:2], stacked), 0, config) == (1, None)


def _faulty(monkeypatch, first, last):
    """Makes the trainer's meta-gradients NaN at steps first..last (counted from 1)."""
    real = parallel.make_meta_grad_fn

    def make(spec, mesh):
        fn = real(spec, mesh)

        def meta_grad_fn(meta_params, step, tasks=None, measure=True, data=None):
            grads, metrics = fn(meta_params, step, tasks, measure)
            bad = (step + 1 >= first) & (step + 1 <= last)
            return jax.tree.map(lambda g: jnp.where(bad, jnp.nan, g), grads), metrics

        return meta_grad_fn

    monkeypatch.setattr(parallel, "make_meta_grad_fn", make)


def _checkpoints_are_finite(workdir):
    """Restores every checkpoint as saved; returns its steps after checking all finite."""
    with ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints"), item_handlers=ocp.StandardCheckpointHandler()
    ) as manager:
        steps = manager.all_steps()
        for step in steps:
            tree = manager.restore(step)
            for leaf in jax.tree.leaves(tree):
                if np.issubdtype(np.asarray(leaf).dtype, np.floating):
                    assert np.all(np.isfinite(leaf)), step
    return sorted(steps)


FIELDS = {"num_steps": 60, "checkpoint_every": 10, "eval_every": 30}


def test_stop_names_the_step_and_the_last_good_checkpoint(monkeypatch, tmp_path):
    _faulty(monkeypatch, 25, 27)
    workdir = str(tmp_path)
    with pytest.raises(nonfinite.NonFiniteError) as e:
        trainer.train_and_evaluate(tiny_config(**FIELDS), workdir)
    ckpts = os.path.join(workdir, "checkpoints")
    assert str(e.value) == (
        f"the meta-loss, meta-gradient or update of step 25 is not finite; the last good "
        f"checkpoint is step 20 in {ckpts!r} (every checkpoint holds finite values): resume "
        f"from it with the same --workdir and pass --config.nonfinite=skip to skip such steps, "
        f"or retrain in a new --workdir with a lower --config.meta_lr or --config.inner_lr"
    )
    assert _checkpoints_are_finite(workdir) == [10, 20]
    assert [r["step"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))] == [10, 20]

    # The advice works: the same workdir with "skip" resumes from 20 and finishes.
    state = trainer.train_and_evaluate(tiny_config(**FIELDS, nonfinite="skip"), workdir)
    assert int(state.step) == 60 and int(state.skipped_steps) == 3
    records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [(r["step"], r["skipped_steps"]) for r in records] == [
        (10, 0),
        (20, 0),
        (30, 3),
        (40, 3),
        (50, 3),
        (60, 3),
    ]
    assert _checkpoints_are_finite(workdir) == [40, 50, 60]
    assert ("train/skipped_steps", "scalar") in _read_events(os.path.join(workdir, "tb"))


def test_skip_stops_after_the_maximum_in_a_row(monkeypatch, tmp_path):
    _faulty(monkeypatch, 25, 60)
    with pytest.raises(nonfinite.NonFiniteError) as e:
        config = tiny_config(**FIELDS, nonfinite="skip", nonfinite_max_skips=4)
        trainer.train_and_evaluate(config, str(tmp_path))
    assert str(e.value).startswith(
        "4 meta-steps in a row (steps 25-28) had a non-finite meta-loss, meta-gradient or "
        "update (config.nonfinite_max_skips); the last good checkpoint is step 20 in "
    )
    assert "raise --config.nonfinite_max_skips" in str(e.value)
    assert _checkpoints_are_finite(str(tmp_path)) == [10, 20]


def test_a_resume_inside_a_longer_streak_names_it_before_any_step(monkeypatch, tmp_path):
    _faulty(monkeypatch, 25, 60)
    workdir = str(tmp_path)
    with pytest.raises(nonfinite.NonFiniteError, match=r"10 meta-steps in a row \(steps 25-34\)"):
        trainer.train_and_evaluate(tiny_config(**FIELDS, nonfinite="skip"), workdir)
    # The checkpoint of step 30 was saved six skipped steps into the streak.
    assert _checkpoints_are_finite(workdir) == [10, 20, 30]
    ckpts = os.path.join(workdir, "checkpoints")
    for fields, allowed in (
        ({"nonfinite": "skip", "nonfinite_max_skips": 4}, "stops after 4 in a row"),
        ({"nonfinite": "stop"}, "stops at the first"),
    ):
        with pytest.raises(nonfinite.NonFiniteError) as e:
            trainer.train_and_evaluate(tiny_config(**FIELDS, **fields), workdir)
        assert str(e.value) == (
            f"the checkpoint of step 30 in {ckpts!r} was saved after 6 non-finite meta-steps "
            f"in a row (steps 25-30), and this run {allowed} (config.nonfinite, "
            f"config.nonfinite_max_skips); resume it with --config.nonfinite=skip "
            f"--config.nonfinite_max_skips=7 or more, or retrain in a new --workdir with a "
            f"lower --config.meta_lr or --config.inner_lr"
        )
        assert _checkpoints_are_finite(workdir) == [10, 20, 30]
        # Stopped before any step and any write: the records and saved config are the run's.
        assert [r["step"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))] == [
            10,
            20,
            30,
        ]
        with open(os.path.join(workdir, "config.json")) as f:
            assert json.load(f)["nonfinite_max_skips"] == 10
    # A limit above the streak resumes: steps 31-36 make twelve in a row, and it stops there.
    config = tiny_config(**FIELDS, nonfinite="skip", nonfinite_max_skips=12)
    with pytest.raises(nonfinite.NonFiniteError, match=r"12 meta-steps in a row \(steps 25-36\)"):
        trainer.train_and_evaluate(config, workdir)


def test_a_finished_run_ending_in_skipped_steps_resumes_under_any_limit(monkeypatch, tmp_path):
    # Its last five steps skipped, it finishes; resumed (with "stop"), nothing is left to run.
    _faulty(monkeypatch, 56, 60)
    config = tiny_config(**FIELDS, nonfinite="skip")
    state = trainer.train_and_evaluate(config, str(tmp_path))
    assert int(state.step) == 60 and int(state.nonfinite_in_row) == 5
    again = trainer.train_and_evaluate(tiny_config(**FIELDS, nonfinite="stop"), str(tmp_path))
    assert int(again.step) == 60


def _last_record(workdir):
    return read_jsonl(os.path.join(workdir, "metrics.jsonl"))[-1]


def test_cli_stops_on_non_finite_values_with_exit_1(tmp_path):
    workdir = tmp_path / "run"
    proc, errors = run_module(
        "maml_dist.train", TINY, f"--workdir={workdir}", "--config.inner_lr=10000"
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert errors == [
        "maml_dist.train: error: the meta-loss, meta-gradient or update of step 1 is not "
        "finite, before any checkpoint was written; retrain in a new --workdir with a lower "
        "--config.meta_lr or --config.inner_lr"
    ]
    assert "Traceback" not in proc.stderr
    assert _checkpoints_are_finite(str(workdir)) == []


def test_cli_skip_stops_after_ten_in_a_row_keeping_finite_checkpoints(tmp_path):
    workdir = tmp_path / "run"
    proc, errors = run_module(
        "maml_dist.train",
        TINY,
        f"--workdir={workdir}",
        "--config.inner_lr=10000",
        "--config.nonfinite=skip",
        "--config.checkpoint_every=5",
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(errors) == 1
    assert errors[0].startswith(
        "maml_dist.train: error: 10 meta-steps in a row (steps 1-10) had a non-finite "
    )
    assert f"the last good checkpoint is step 5 in '{workdir}/checkpoints'" in errors[0]
    # Step 10's chunk was halted: its checkpoint is never written.
    assert _checkpoints_are_finite(str(workdir)) == [5]


def test_cli_skip_finishes_and_counts_skipped_steps(tmp_path):
    workdir = tmp_path / "run"
    # inner_lr 100 overflows on a few meta-batches only (measured: 4 of 200 steps).
    proc, _ = run_module(
        "maml_dist.train",
        TINY,
        f"--workdir={workdir}",
        "--config.inner_lr=100",
        "--config.nonfinite=skip",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = _last_record(str(workdir))
    assert last["step"] == 200 and 0 < last["skipped_steps"] < 10
    assert "meta-step(s) with non-finite values in steps" in proc.stderr
    assert _checkpoints_are_finite(str(workdir)) == [100, 200]
    with open(workdir / "config.json") as f:
        assert json.load(f)["nonfinite"] == "skip"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--config.nonfinite=skp"],
            "config.nonfinite must be 'stop' or 'skip', got 'skp'; pass --config.nonfinite=stop",
        ),
        (
            ["--config.nonfinite_max_skips=0"],
            "config.nonfinite_max_skips must be a positive integer, got 0; pass e.g. "
            "--config.nonfinite_max_skips=1",
        ),
    ],
)
def test_cli_rejects_bad_nonfinite_fields(tmp_path, args, message):
    proc, errors = run_module("maml_dist.train", TINY, f"--workdir={tmp_path / 'run'}", *args)
    assert proc.returncode == 2
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()
