"""Damaged checkpoints: training and evaluation fall back to the newest one that restores."""

import glob
import json
import logging
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import run_module, tiny_config

from maml_dist import trainer
from maml_dist.errors import UserInputError
from maml_dist.metrics import read_jsonl


def _truncate_data(step_dir):
    # The array data orbax reads back (the OCDBT files the item's manifest points to).
    files = glob.glob(os.path.join(step_dir, "default", "d", "*"))
    assert files
    for path in files:
        os.truncate(path, 100)


def _delete_tree_metadata(step_dir):
    os.remove(os.path.join(step_dir, "default", "_METADATA"))


def _garble_tree_metadata(step_dir):
    with open(os.path.join(step_dir, "default", "_METADATA"), "w") as f:
        f.write("{not json")


def _delete_item(step_dir):
    shutil.rmtree(os.path.join(step_dir, "default"))


DAMAGES = {
    "truncated data": _truncate_data,
    "missing metadata": _delete_tree_metadata,
    "unreadable metadata": _garble_tree_metadata,
    "missing item folder": _delete_item,
}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted tiny run: checkpoints at 100 and 200."""
    workdir = str(tmp_path_factory.mktemp("straight"))
    state = trainer.train_and_evaluate(tiny_config(), workdir)
    return workdir, state


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def _losses(workdir):
    return [(r["step"], r["meta_loss"]) for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_restart_falls_back_past_a_damaged_checkpoint(straight, tmp_path, caplog, damage):
    reference, straight_state = straight
    workdir = _copy(reference, tmp_path / "run")
    ckpts = os.path.join(workdir, "checkpoints")
    DAMAGES[damage](os.path.join(ckpts, "200"))
    with caplog.at_level(logging.WARNING):
        resumed = trainer.train_and_evaluate(tiny_config(), workdir)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    damaged = [w for w in warnings if "cannot be restored" in w]
    assert len(damaged) == 1, warnings
    assert damaged[0].startswith("the checkpoint at step 200 cannot be restored (")
    assert "\n" not in damaged[0]
    moved = os.path.join(ckpts, "damaged", "200")
    assert f"moved it to {moved} and resuming from step 100" in damaged[0]
    # Kept for the user, out of orbax's way; step 200 was trained and saved again.
    assert os.path.isdir(moved)
    assert sorted(os.listdir(ckpts)) == ["100", "200", "damaged"]
    # The restart retrained steps 101-200 exactly as the uninterrupted run did.
    assert _losses(workdir) == _losses(reference)
    for a, b in zip(jax.tree.leaves(straight_state), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_no_restorable_checkpoint_stops_naming_the_steps(straight, tmp_path):
    workdir = _copy(straight[0], tmp_path / "run")
    ckpts = os.path.join(workdir, "checkpoints")
    for step in ("100", "200"):
        _truncate_data(os.path.join(ckpts, step))
    with pytest.raises(UserInputError) as e:
        trainer.train_and_evaluate(tiny_config(), workdir)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"no checkpoint in {ckpts!r} can be restored (tried steps 200, 100;")
    # When nothing restores the fault is likely not the files: nothing is moved.
    assert sorted(os.listdir(ckpts)) == ["100", "200"]


def test_a_checkpoint_damaged_twice_is_kept_twice(straight, tmp_path):
    workdir = _copy(straight[0], tmp_path / "run")
    ckpts = os.path.join(workdir, "checkpoints")
    for _ in range(2):
        _truncate_data(os.path.join(ckpts, "200"))
        trainer.train_and_evaluate(tiny_config(), workdir)
    assert sorted(os.listdir(os.path.join(ckpts, "damaged"))) == ["200", "200.2"]


def test_checkpoints_without_the_later_state_fields_resume(straight, tmp_path):
    """A checkpoint of a version before `TrainState.skipped_steps` resumes bit for bit."""
    reference, straight_state = straight
    workdir = tmp_path / "old"
    os.makedirs(workdir)
    # The older run: its config predates the non-finite fields, its checkpoint the counters.
    with open(os.path.join(reference, "config.json")) as f:
        config = json.load(f)
    for later in ("nonfinite", "nonfinite_max_skips"):
        config.pop(later, None)
    with open(workdir / "config.json", "w") as f:
        json.dump(config, f)
    shutil.copy(os.path.join(reference, "metrics.jsonl"), workdir / "metrics.jsonl")
    source = ocp.CheckpointManager(
        os.path.join(reference, "checkpoints"), item_handlers=ocp.StandardCheckpointHandler()
    )
    saved = source.restore(100)  # a plain dict tree
    source.close()
    old = {k: v for k, v in saved.items() if k in ("step", "meta_params", "opt_state")}
    assert set(saved) - set(old) == {"skipped_steps", "nonfinite_in_row"}
    with ocp.CheckpointManager(str(workdir / "checkpoints")) as manager:
        manager.save(100, args=ocp.args.StandardSave(old))
    resumed = trainer.train_and_evaluate(tiny_config(), str(workdir))
    assert _losses(str(workdir)) == _losses(reference)
    for a, b in zip(jax.tree.leaves(straight_state), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _evaluate(workdir, *args):
    return run_module(
        "maml_dist.evaluate", f"--workdir={workdir}", "--num_tasks=4", "--max_inner_steps=1", *args
    )


def test_evaluate_falls_back_and_leaves_the_damaged_one(straight, tmp_path):
    workdir = _copy(straight[0], tmp_path / "run")
    _truncate_data(os.path.join(workdir, "checkpoints", "200"))
    proc, errors = _evaluate(workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not errors
    warned = [line for line in proc.stderr.splitlines() if "cannot be restored" in line]
    assert len(warned) == 1 and "the checkpoint at step 200 cannot be restored (" in warned[0]
    assert warned[0].endswith("; evaluating step 100")
    assert "Traceback" not in proc.stderr
    with open(os.path.join(workdir, "eval", "results.json")) as f:
        assert json.load(f)["step"] == 100
    # Evaluation only reads: the damaged checkpoint stays where it was.
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["100", "200"]


def test_evaluate_a_damaged_step_fails_in_one_line(straight, tmp_path):
    workdir = _copy(straight[0], tmp_path / "run")
    ckpts = os.path.join(workdir, "checkpoints")
    _truncate_data(os.path.join(ckpts, "200"))
    proc, errors = _evaluate(workdir, "--step=200")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith(
        f"maml_dist.evaluate: error: the checkpoint at step 200 in {ckpts!r} cannot be restored ("
    )
    assert errors[0].endswith(
        "; pass another --step (steps there: 100), or none for the newest one that restores"
    )
    assert "Traceback" not in proc.stderr


def test_two_processes_fall_back_together(tmp_path):
    """2 processes x 4 devices pass over a damaged checkpoint alike and match 1 x 8."""
    from test_multiprocess import DETERMINISTIC, TINY, _local, _overrides

    straight = str(tmp_path / "straight")
    trainer.train_and_evaluate(tiny_config(num_steps=60, **DETERMINISTIC), straight)
    workdir = str(tmp_path / "run")
    trainer.train_and_evaluate(tiny_config(num_steps=30, **DETERMINISTIC), workdir)
    trainer.train_and_evaluate(tiny_config(num_steps=60, **DETERMINISTIC), workdir)
    ckpts = os.path.join(workdir, "checkpoints")
    assert sorted(os.listdir(ckpts)) == ["30", "60"]
    _truncate_data(os.path.join(ckpts, "60"))
    rc, _, err = _local(
        2, 4, TINY, f"--workdir={workdir}", *_overrides(num_steps=60, **DETERMINISTIC)
    )
    assert rc == 0, err[-3000:]
    for log in ("process_0.log", "process_1.log"):
        with open(os.path.join(workdir, "logs", log)) as f:
            assert "the checkpoint at step 60 cannot be restored (" in f.read(), log
    assert sorted(os.listdir(os.path.join(ckpts, "damaged"))) == ["60"]
    assert _losses(workdir) == _losses(straight)
