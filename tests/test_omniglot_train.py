"""Omniglot through the real trainer and evaluator, the host feed and the one-shot runs."""

import json
import pathlib
import pickle

import chex
import jax
import numpy as np
import pytest
from helpers import make_omniglot_set, make_one_shot_runs, run_module, zip_folder

from configs import omniglot as omniglot_configs
from maml_dist import checks, metrics, parallel, plotting, trainer
from maml_dist.data import omniglot_runs
from maml_dist.data.episodes import EpisodeSampler
from maml_dist.data.omniglot import decode_image
from maml_dist.errors import UserInputError
from maml_dist.feed import HostFeed
from maml_dist.problem import make_problem
from maml_dist.types import TRAIN_STREAM

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = f"--config={ROOT / 'configs' / 'omniglot.py'}:tiny"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Generated sets: 4 training alphabets, and Delta (6 characters) held out."""
    root = tmp_path_factory.mktemp("omniglot")
    make_omniglot_set(root, "images_background_small1", {"Alpha": 4, "Beta": 4, "Gamma": 4})
    make_omniglot_set(root, "images_background_small2", {"Delta": 6, "Epsilon": 6, "Gamma": 4})
    return root


def _config(data, tmp_path, **overrides):
    config = omniglot_configs.get_config("tiny")
    config.data_dir = str(data)
    config.omniglot.cache_dir = str(tmp_path / "cache")
    config.omniglot.held_out = ("Delta",)
    config.omniglot.num_held_out = 0
    config.update(overrides)
    return config


def _run(module, *args):
    return run_module(module, *args, timeout=300)


def test_configs_carry_the_paper_hyperparameters():
    for variant in omniglot_configs.VARIANTS:
        checks.validate_config(omniglot_configs.get_config(variant))
    expected = {"5w1s": (5, 1, 32, 0.4, 1), "20w5s": (20, 5, 16, 0.1, 5)}
    for variant, values in expected.items():
        c = omniglot_configs.get_config(variant)
        assert (c.ways, c.shots, c.meta_batch_size, c.inner_lr, c.inner_steps) == values
        assert (c.eval_inner_steps, c.meta_lr, c.omniglot.num_train) == (10, 1e-3, 1200)
        assert c.omniglot.rotations and c.omniglot.split == "standard"
    minimal = omniglot_configs.get_config("minimal_5w1s")
    assert minimal.omniglot.split == "alphabet"
    assert set(minimal.omniglot.held_out) == {"Greek", "Korean"}


def test_train_then_evaluate_classification_from_the_command_line(data, tmp_path):
    workdir = tmp_path / "run"
    common = [f"--config.data_dir={data}", f"--config.omniglot.cache_dir={tmp_path / 'c'}"]
    proc, _ = _run(
        "maml_dist.train",
        TINY,
        f"--workdir={workdir}",
        *common,
        "--config.omniglot.held_out=('Delta',)",
        "--cpu_devices=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 6/6" in proc.stderr
    records = metrics.read_jsonl(workdir / "metrics.jsonl")
    last = records[-1]
    for key in ("accuracy_after", "accuracy_before", "meta_loss", "loss_before"):
        assert np.isfinite(last[key]), key
    assert 0.0 <= last["accuracy_after"] <= 1.0
    assert last["data_sec_per_step"] > 0 and last["data_wait_sec_per_step"] >= 0
    for k in range(3):  # eval_inner_steps = 2
        assert 0.0 <= last[f"eval_accuracy_after_{k}_steps"] <= 1.0
        assert last[f"eval_loss_after_{k}_steps"] > 0

    proc, errors = _run("maml_dist.evaluate", f"--workdir={workdir}", "--num_tasks=8")
    assert proc.returncode == 2 and len(errors) == 1  # 1 + 15 images per class; it has 4
    assert "maml_dist.evaluate: --shots / --num_query" in errors[0]
    moved = tmp_path / "moved"
    data.rename(moved)  # evaluating where the data set now lives
    try:
        proc, _ = _run(
            "maml_dist.evaluate",
            f"--workdir={workdir}",
            "--num_tasks=8",
            "--num_query=3",
            f"--data_dir={moved}",
        )
    finally:
        moved.rename(data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "query accuracy (mean ± 95% CI) over 8 test tasks" in proc.stdout
    assert "2-way" in proc.stdout
    report = json.loads((workdir / "eval" / "results.json").read_text())
    assert (report["task"], report["metric"], report["num_query"]) == ("omniglot", "accuracy", 3)
    (result,) = report["results"]
    assert (result["shots"], result["ways"], len(result["mean"])) == (1, 2, 11)
    assert all(0.0 <= m <= 1.0 for m in result["mean"])
    for name in ("curves.png", "example_episode.png"):
        assert (workdir / "eval" / name).stat().st_size > 0


@pytest.mark.parametrize("placement", ["host", "device"])
def test_training_is_the_same_on_1_and_4_devices_and_resumes(data, tmp_path, placement):
    deterministic = {"task_batching": "loop", "reduction": "ordered", "data_placement": placement}
    config = _config(data, tmp_path, **deterministic)
    one = trainer.train_and_evaluate(config, str(tmp_path / "one"), jax.devices()[:1])
    four = trainer.train_and_evaluate(config, str(tmp_path / "four"), jax.devices()[:4])
    chex.assert_trees_all_equal(jax.device_get(one.meta_params), jax.device_get(four.meta_params))
    logged = [metrics.read_jsonl(tmp_path / w / "metrics.jsonl") for w in ("one", "four")]
    for a, b in zip(*logged, strict=True):
        assert a["meta_loss"] == b["meta_loss"] and a["accuracy_after"] == b["accuracy_after"]

    resumed = tmp_path / "resumed"
    trainer.train_and_evaluate(
        _config(data, tmp_path, num_steps=3, **deterministic), str(resumed), [jax.devices()[0]]
    )
    final = trainer.train_and_evaluate(config, str(resumed), jax.devices()[:4])
    chex.assert_trees_all_equal(jax.device_get(final.meta_params), jax.device_get(four.meta_params))


@pytest.mark.parametrize("workers", [1, 2])
def test_host_feed_places_each_devices_slice_of_the_global_batch(data, tmp_path, workers):
    problem = make_problem(_config(data, tmp_path))
    sampler = problem.family.episodes("train", 1, 1)
    mesh = parallel.make_mesh(jax.devices()[:4])
    feed = HostFeed(
        sampler, seed=5, mesh=mesh, per_device=2, chunks=[(0, 2), (2, 3)], workers=workers
    )
    try:
        for start, end in [(0, 2), (2, 3)]:
            got_start, got_end, batches = feed.take()
            assert (got_start, got_end) == (start, end)
            assert batches.support_x.sharding.spec == jax.sharding.PartitionSpec(None, "tasks")
            for i, step in enumerate(range(start, end)):
                expected = sampler.batch(5, TRAIN_STREAM, step, range(8))
                chex.assert_trees_all_equal(
                    jax.tree.map(lambda a, i=i: np.asarray(a)[i], batches), expected
                )
        with pytest.raises(RuntimeError, match="no more chunks"):
            feed.take()
        build, wait = feed.times(3)
        assert build > 0 and wait >= 0
    finally:
        feed.close()


class _Broken:
    """A sampler that fails (at module level: worker processes unpickle it)."""

    def batch(self, *args):
        raise ValueError("image 7 is unreadable")


@pytest.mark.parametrize("workers", [1, 2])
def test_host_feed_raises_the_samplers_error_in_the_trainer(workers):
    mesh = parallel.make_mesh(jax.devices()[:2])
    feed = HostFeed(_Broken(), seed=0, mesh=mesh, per_device=1, chunks=[(0, 1)], workers=workers)
    with pytest.raises(ValueError, match="image 7 is unreadable"):
        feed.take()
    feed.close()


def test_a_sampler_sends_a_memory_mapped_set_to_workers_by_its_file(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (60, 16, 16, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)

    class Set:
        pass

    mapped = Set()
    mapped.images = np.load(tmp_path / "images.npy", mmap_mode="r")
    mapped.labels = np.repeat(np.arange(6), 10)
    sampler = EpisodeSampler(mapped, np.arange(6), 3, 1, 2, rotations=False)
    sent = pickle.dumps(sampler)
    assert len(sent) < images.nbytes / 10  # the file's name, not its 46 KB of pixels
    received = pickle.loads(sent)
    assert isinstance(received.images, np.memmap)
    chex.assert_trees_all_equal(
        received.batch(0, TRAIN_STREAM, 3, range(4)), sampler.batch(0, TRAIN_STREAM, 3, range(4))
    )
    # An in-memory set travels whole.
    mapped.images = np.asarray(images)
    assert len(pickle.dumps(EpisodeSampler(mapped, np.arange(6), 3, 1, 2, False))) > images.nbytes


def test_one_shot_runs_reader_takes_folders_and_zips(tmp_path):
    folder, truth = make_one_shot_runs(tmp_path / "all_runs", num_runs=2)
    runs = omniglot_runs.load_runs(str(folder), image_size=8)
    zipped = omniglot_runs.load_runs(str(zip_folder(folder)), image_size=8)
    assert [r.name for r in runs] == [r.name for r in zipped] == ["run01", "run02"]
    for a, b in zip(runs, zipped, strict=True):
        chex.assert_trees_all_equal(
            (a.support_x, a.query_x, a.query_y), (b.support_x, b.query_x, b.query_y)
        )
        np.testing.assert_array_equal(a.query_y, truth[a.name])
        assert a.support_x.shape == (20, 8, 8) and a.query_x.shape == (20, 8, 8)
    png = (folder / "run02" / "training" / "class05.png").read_bytes()
    np.testing.assert_array_equal(runs[1].support_x[4], decode_image(png, "x", 8))

    with pytest.raises(UserInputError, match="do not exist"):
        omniglot_runs.load_runs(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="holds no run"):
        omniglot_runs.load_runs(str(tmp_path / "empty"))
    labels = folder / "run01" / "class_labels.txt"
    labels.write_text("run01/test/item01.png run01/training/class99.png\n")
    with pytest.raises(UserInputError, match=r"class_labels\.txt line 1"):
        omniglot_runs.load_runs(str(folder))
    labels.write_text("run01/test/item77.png run01/training/class01.png\n")
    with pytest.raises(UserInputError, match=r"item77\.png'.*is missing"):
        omniglot_runs.load_runs(str(folder))


def test_one_shot_runs_evaluation_reports_per_run_and_overall_error(data, tmp_path):
    config = _config(data, tmp_path, ways=20, num_steps=2, eval_every=2, checkpoint_every=2)
    config.omniglot.rotations = True  # 24 held-out classes for 20-way episodes
    config.omniglot.validation_alphabets = ("Epsilon",)
    workdir = tmp_path / "twenty"
    state = trainer.train_and_evaluate(config, str(workdir), jax.devices()[:1])
    runs_dir, _ = make_one_shot_runs(tmp_path / "all_runs", num_runs=3)
    steps = 3
    proc, _ = _run(
        "maml_dist.evaluate",
        f"--workdir={workdir}",
        "--num_tasks=4",
        "--num_query=3",
        f"--max_inner_steps={steps}",
        f"--omniglot_runs={zip_folder(runs_dir)}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"one-shot runs (Lake et al. 2015), error after {steps} inner steps" in proc.stdout
    assert "run03:" in proc.stdout
    report = json.loads((workdir / "eval" / "results.json").read_text())["omniglot_runs"]
    assert [r["run"] for r in report["per_run"]] == ["run01", "run02", "run03"]
    assert report["overlap"] == [] and report["unknown_alphabet"] == []

    # Recompute each run's error directly: adapt on its 20 training images, labelled 0..19
    # in class order, then classify its test images. Adapting with the support labels
    # shuffled gives other errors, so a support-label mix-up in the evaluator shows here.
    problem = make_problem(config)
    apply = jax.jit(lambda p, x: problem.model.apply({"params": p}, x))

    def errors(shuffle):
        out = []
        for run in omniglot_runs.load_runs(str(runs_dir), image_size=8):
            labels = np.arange(20)
            if shuffle:
                labels = np.random.default_rng(0).permutation(labels)
            adapted = problem.algorithm.adapt(
                state.meta_params, run.support_x[..., None], labels, steps
            )
            logits = apply(adapted, run.query_x[..., None])
            out.append(float(np.mean(np.argmax(logits, -1) != run.query_y)))
        return out

    got = [r["error_rate"] for r in report["per_run"]]
    np.testing.assert_allclose(got, errors(shuffle=False), atol=1e-6)
    np.testing.assert_allclose(report["error_rate"], np.mean(got), atol=1e-6)
    assert not np.allclose(got, errors(shuffle=True), atol=1e-6)


def test_runs_need_a_20_way_omniglot_run_and_bad_data_fails_before_compile(data, tmp_path):
    workdir = tmp_path / "five"
    trainer.train_and_evaluate(
        _config(data, tmp_path, num_steps=2), str(workdir), jax.devices()[:1]
    )
    proc, errors = _run("maml_dist.evaluate", f"--workdir={workdir}", f"--omniglot_runs={tmp_path}")
    assert proc.returncode == 2 and len(errors) == 1
    assert (
        "the one-shot runs are 20-way Omniglot problems; this run is 'omniglot' 2-way"
        in (errors[0])
    )
    proc, errors = _run(
        "maml_dist.train", TINY, f"--workdir={tmp_path / 'new'}", "--config.data_dir=/nowhere"
    )
    assert proc.returncode == 2 and len(errors) == 1
    assert "Omniglot folder '/nowhere' does not exist; get images_background.zip" in errors[0]
    proc, errors = _run("maml_dist.train", TINY, f"--workdir={tmp_path / 'new'}")
    assert proc.returncode == 2 and len(errors) == 1
    assert "config.data_dir is not set; pass --config.data_dir=FOLDER" in errors[0]
    # Errors found only once the images are read still come before the workdir is written.
    proc, errors = _run(
        "maml_dist.train",
        TINY,
        f"--workdir={tmp_path / 'new'}",
        f"--config.data_dir={data}",
        "--config.omniglot.held_out=('Klingon',)",
    )
    assert proc.returncode == 2 and len(errors) == 1
    assert "unknown alphabet(s) ['Klingon'] in the held-out list" in errors[0]
    assert not (tmp_path / "new").exists()


def test_episode_image_draws_every_class_row():
    rng = np.random.default_rng(0)
    support_x = rng.integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    query_x = rng.integers(0, 256, (15, 28, 28, 1), dtype=np.uint8)
    labels = np.repeat(np.arange(5), 3)
    image = plotting.episode_image(support_x, np.arange(5), query_x, labels, labels[::-1])
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    assert image.shape[0] > 100 and image.shape[1] > 100
