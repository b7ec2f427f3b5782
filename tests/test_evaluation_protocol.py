"""Evaluation that cannot leak: the recorded split, the fixed test seed, sharded meta-testing."""

import json
import shutil

import jax
import numpy as np
import pytest
from helpers import make_omniglot_set, make_one_shot_runs, run_module, tiny_config, zip_folder

from configs import omniglot as omniglot_configs
from maml_dist import meta_test, parallel, plotting, recorded_split, trained_run, trainer
from maml_dist.problem import make_problem
from maml_dist.types import TEST_STREAM


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Generated sets: Alpha, Beta, Gamma to train or validate on, Delta held out."""
    root = tmp_path_factory.mktemp("omniglot")
    make_omniglot_set(root, "images_background_small1", {"Alpha": 4, "Beta": 4, "Gamma": 4})
    make_omniglot_set(root, "images_background_small2", {"Delta": 6, "Gamma": 4})
    return root


def _config(data, cache, **overrides):
    config = omniglot_configs.get_config("tiny")
    config.data_dir = str(data)
    config.omniglot.cache_dir = str(cache)
    config.omniglot.held_out = ("Delta",)
    config.omniglot.num_held_out = 0
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A tiny Omniglot run trained through the trainer, on one device."""
    root = tmp_path_factory.mktemp("trained")
    config = _config(data, root / "cache", num_steps=2, eval_every=2, checkpoint_every=2)
    trainer.train_and_evaluate(config, str(root / "run"), jax.devices()[:1])
    return root / "run", config


def test_split_json_records_three_disjoint_parts_and_the_data(trained):
    workdir, config = trained
    record = json.loads((workdir / "split.json").read_text())
    parts = [set(record[p]) for p in ("train", "validation", "test")]
    assert all(parts), parts
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert parts[2] == {f"Delta/character{c:02d}" for c in range(1, 7)}
    # Validation is one whole alphabet held out from meta-training, never from the test.
    (validation,) = {name.split("/")[0] for name in parts[1]}
    assert validation in {"Alpha", "Beta", "Gamma"}
    assert validation not in {name.split("/")[0] for name in parts[0]}
    assert record == make_problem(config).family.split_record()
    assert record["checksum"].startswith("blake2b:")


def test_the_checksum_is_of_the_content_not_the_files(data, tmp_path):
    config = _config(data, tmp_path / "cache")
    folder = make_problem(config).family.split_record()
    zipped = tmp_path / "zipped"
    zipped.mkdir()
    for name in ("images_background_small1", "images_background_small2"):
        shutil.copy(zip_folder(shutil.copytree(data / name, tmp_path / "z" / name)), zipped)
    config.data_dir = str(zipped)
    assert make_problem(config).family.split_record() == folder
    # One image changed: same classes, another checksum.
    changed = tmp_path / "changed"
    shutil.copytree(data, changed)
    image = next((changed / "images_background_small2" / "Delta" / "character01").iterdir())
    shutil.copy(
        next((changed / "images_background_small1" / "Alpha" / "character01").iterdir()), image
    )
    config.data_dir = str(changed)
    other = make_problem(config).family.split_record()
    assert other["test"] == folder["test"] and other["checksum"] != folder["checksum"]
    assert "its images are not" in recorded_split.difference(folder, other)


def test_evaluating_on_data_without_a_held_out_character_is_refused(trained, data, tmp_path):
    workdir, _ = trained
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    smaller = tmp_path / "smaller"
    shutil.copytree(data, smaller)
    shutil.rmtree(smaller / "images_background_small2" / "Delta" / "character03")
    proc, errors = run_module(
        "maml_dist.evaluate", f"--workdir={workdir}", f"--data_dir={smaller}", "--num_tasks=4"
    )
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert (
        "does not give the class split this run recorded in" in errors[0]
        and "the recorded test part has 'Delta/character03', which is not in it" in errors[0]
    )
    assert "compil" not in proc.stderr  # refused before any compile
    after = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing damaged


def test_resuming_on_other_data_is_refused(trained, data, tmp_path):
    workdir, config = trained
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    other = tmp_path / "other"
    shutil.copytree(data, other)
    # Gamma/character02 moves from meta-training (or validation) to nowhere.
    for name in ("images_background_small1", "images_background_small2"):
        shutil.rmtree(other / name / "Gamma" / "character02")
    config = _config(other, tmp_path / "cache", num_steps=4, eval_every=2, checkpoint_every=2)
    with pytest.raises(recorded_split.UserInputError, match="'Gamma/character02', which is not"):
        trainer.train_and_evaluate(config, str(copy), jax.devices()[:1])
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == sorted(
        p.name for p in (workdir / "checkpoints").iterdir()
    )


def test_test_tasks_do_not_depend_on_the_training_seed_and_the_protocol_is_recorded(
    trained, data, tmp_path
):
    workdir, _ = trained
    other = tmp_path / "seed3"
    config = _config(
        data, tmp_path / "cache", seed=3, num_steps=2, eval_every=2, checkpoint_every=2
    )
    trainer.train_and_evaluate(config, str(other), jax.devices()[:1])
    args = ("--num_tasks=4", "--protocol=maml_code", "--max_inner_steps=1")
    reports = []
    for run in (workdir, other):
        proc, _ = run_module("maml_dist.evaluate", f"--workdir={run}", *args)
        assert proc.returncode == 0, proc.stderr[-2000:]
        reports.append(json.loads((run / "eval" / "results.json").read_text()))
    a, b = reports
    assert (a["train_seed"], b["train_seed"]) == (0, 3)
    assert a["test_seed"] == b["test_seed"] == 0
    assert a["protocol"] == "maml_code" and a["num_query"] == 1  # K = 1 query per class
    assert a["split"]["test_classes"] == b["split"]["test_classes"]
    assert a["split"]["checked"] and a["split"]["checksum"] == b["split"]["checksum"]
    # The seed-3 run was scored on the test tasks of seed 0, not of its own seed.
    problem = make_problem(config)
    params, _ = trained_run.restore_params(config, str(other), None, problem)
    for seed, same in ((0, True), (3, False)):
        tasks = problem.fixed_tasks(seed, TEST_STREAM, 4, 1, 1)
        curves = meta_test.adaptation_curves(
            problem.algorithm, params, tasks, 1, (problem.score_fn,)
        )
        assert np.allclose(curves[..., 0].mean(0), b["results"][0]["mean"]) == same
    proc, errors = run_module(
        "maml_dist.evaluate", f"--workdir={workdir}", "--protocol=maml_code", "--num_query=3"
    )
    assert proc.returncode == 2 and "drop --num_query" in errors[0]


@pytest.mark.parametrize("family", ["sinusoid", "omniglot"])
def test_meta_testing_is_split_over_devices_with_the_same_numbers(family, data, tmp_path):
    config = tiny_config() if family == "sinusoid" else _config(data, tmp_path / "cache")
    problem = make_problem(config)
    params = problem.algorithm.init(
        problem.model.init(jax.random.key(0), problem.family.example_input())["params"]
    )
    tasks = jax.device_get(problem.fixed_tasks(0, TEST_STREAM, 13, config.shots, 2))
    curves = {}
    for n in (1, 2, 8):
        mesh = parallel.make_mesh(jax.devices()[:n])
        placed = jax.device_put(params, parallel.replicated(mesh))
        curves[n] = meta_test.adaptation_curves(
            problem.algorithm, placed, tasks, 2, (problem.score_fn,), chunk=8
        )
    assert curves[1].shape == (13, 3, 1)
    # Bit for bit: each device vmaps its own tasks, and a task's numbers do not depend on
    # how many share its device (measured; a tolerance would hide a mixed-up task).
    np.testing.assert_array_equal(curves[2], curves[1])
    np.testing.assert_array_equal(curves[8], curves[1])
    # Each task's curve is its own: the unsharded vmap reference of one task at a time.
    for i in (0, 12):
        one = jax.tree.map(lambda a, i=i: a[i : i + 1], tasks)
        alone = meta_test.adaptation_curves(problem.algorithm, params, one, 2, (problem.score_fn,))
        np.testing.assert_allclose(alone[0], curves[8][i], rtol=1e-6, atol=1e-7)


def test_mean_and_ci95_and_median_by_hand():
    values = np.array([[1.0, 10.0], [2.0, 10.0], [3.0, 10.0], [4.0, 10.0]])
    mean, ci = meta_test.mean_and_ci95(values)
    np.testing.assert_allclose(mean, [2.5, 10.0])
    # sample std of 1..4 is sqrt(5/3); the half-width is 1.96 * std / sqrt(4).
    np.testing.assert_allclose(ci, [1.96 * np.sqrt(5 / 3) / 2, 0.0])
    np.testing.assert_array_equal(meta_test.median(values), [2.5, 10.0])
    np.testing.assert_array_equal(meta_test.median(np.array([[1.0], [np.nan], [5.0]])), [5.0])
    mean, ci = meta_test.mean_and_ci95(np.array([[7.0]]))
    assert (mean[0], ci[0]) == (7.0, 0.0)


def _colour_pixels(image, rgb):
    return int(np.sum(np.all(np.abs(image.astype(int) - np.array(rgb) * 255) < 30, axis=-1)))


def test_episode_image_frames_right_and_wrong_predictions_in_their_colours():
    rng = np.random.default_rng(0)
    support_x = rng.integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    query_x = rng.integers(0, 256, (15, 28, 28, 1), dtype=np.uint8)
    labels = np.repeat(np.arange(5), 3)
    green, red = (0.1, 0.7, 0.1), (0.9, 0.1, 0.1)
    right = plotting.episode_image(support_x, np.arange(5), query_x, labels, labels)
    wrong = plotting.episode_image(support_x, np.arange(5), query_x, labels, (labels + 1) % 5)
    assert _colour_pixels(right, green) > 0 and _colour_pixels(right, red) == 0
    assert _colour_pixels(wrong, red) > 0 and _colour_pixels(wrong, green) == 0
    # Class 0's three queries wrong, the other twelve right: a fifth of the frames red.
    mixed_labels = labels.copy()
    mixed_labels[:3] = 1
    mixed = plotting.episode_image(support_x, np.arange(5), query_x, labels, mixed_labels)
    r, g = _colour_pixels(mixed, red), _colour_pixels(mixed, green)
    assert 0.15 < r / (r + g) < 0.25, (r, g)
    # The support images are drawn: ink 255 on a blank page shows as dark pixels.
    blank = plotting.episode_image(np.zeros_like(support_x), np.arange(5), query_x, labels, labels)
    assert np.sum(right < 60) > np.sum(blank < 60)


def test_one_shot_runs_refuse_a_run_that_trained_on_their_alphabets(tmp_path):
    # Atlantean is the alphabet of Lake et al.'s run01 and run02 (README, "The one-shot
    # classification runs").
    root = tmp_path / "data"
    make_omniglot_set(root, "images_background_small1", {"Atlantean": 5, "Beta": 5})
    make_omniglot_set(root, "images_background_small2", {"Delta": 5})
    config = _config(root, tmp_path / "cache", ways=20, num_steps=2, checkpoint_every=2)
    config.omniglot.rotations = True  # 20 classes in each part
    config.omniglot.validation_alphabets = ("Beta",)
    config.omniglot.num_validation_alphabets = 0
    workdir = tmp_path / "run"
    trainer.train_and_evaluate(config, str(workdir), jax.devices()[:1])
    runs, _ = make_one_shot_runs(tmp_path / "all_runs", num_runs=2)
    args = (f"--workdir={workdir}", "--num_tasks=2", "--num_query=1", "--max_inner_steps=1")
    proc, errors = run_module("maml_dist.evaluate", *args, f"--omniglot_runs={runs}")
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert (
        "meta-trained on characters of 1 of the one-shot runs' alphabets (Atlantean)" in (errors[0])
    )
    assert not (workdir / "eval").exists()
    proc, _ = run_module("maml_dist.evaluate", *args, f"--omniglot_runs={runs}", "--allow_overlap")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((workdir / "eval" / "results.json").read_text())["omniglot_runs"]
    assert report["overlap"] == ["Atlantean"] and report["unknown_alphabet"] == []
    # A run not named run01..run20 cannot be placed in an alphabet.
    (runs / "run02").rename(runs / "mine")
    proc, errors = run_module("maml_dist.evaluate", *args, f"--omniglot_runs={runs}")
    assert proc.returncode == 2 and "cannot tell which alphabet one-shot run 'mine'" in errors[0]
