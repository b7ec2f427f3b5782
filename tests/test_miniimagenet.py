"""mini-ImageNet: the CSV layout's reader and split, its checks, the paper's net and configs."""

import dataclasses
import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from image_data import make_miniimagenet
from PIL import Image

from configs import miniimagenet as miniimagenet_configs
from maml_dist import algorithms, checks, evaluator, models, trainer
from maml_dist.data import images, miniimagenet
from maml_dist.errors import UserInputError
from maml_dist.problem import inner_config, make_problem

HINT = (
    "train.csv, val.csv and test.csv are the standard split of Ravi & Larochelle "
    "(https://github.com/twitter/meta-learning-lstm, folder data/miniImagenet), and the "
    "images come from ImageNet (ILSVRC-2012), resized to 84x84 and named as the CSVs list "
    "them in ROOT/images/; nothing is downloaded at run time"
)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """4 / 3 / 3 classes (train / val / test) of 6 84x84 JPEGs each."""
    return make_miniimagenet(tmp_path_factory.mktemp("miniimagenet"), (4, 3, 3), 6)


def _config(root, tmp_path, variant="tiny", **overrides):
    config = miniimagenet_configs.get_config(variant)
    config.data_dir = str(root)
    config.miniimagenet.cache_dir = str(tmp_path / "cache")
    config.update(overrides)
    return config


def test_reader_shapes_labels_and_the_csv_split(layout, tmp_path):
    root, listed = layout
    data, split = miniimagenet.load(str(root))
    assert data.images.shape == (60, 84, 84, 3) and data.images.dtype == np.uint8
    wnids = [
        w
        for name in ("train.csv", "val.csv", "test.csv")
        for w in dict.fromkeys(w for _, w in listed[name])
    ]
    assert data.classes == tuple(wnids)
    np.testing.assert_array_equal(data.labels, np.repeat(np.arange(10), 6))
    np.testing.assert_array_equal(split.train, [0, 1, 2, 3])
    np.testing.assert_array_equal(split.validation, [4, 5, 6])
    np.testing.assert_array_equal(split.test, [7, 8, 9])
    # 84x84 files are kept exactly as decoded, in RGB.
    filename = listed["val.csv"][7][0]
    want = np.asarray(Image.open(root / "images" / filename).convert("RGB"))
    np.testing.assert_array_equal(data.images[24 + 7], want)
    smaller, _ = miniimagenet.load(str(root), size=42)
    assert smaller.images.shape == (60, 42, 42, 3)


def test_cache_hit_decodes_nothing_and_follows_the_csvs(tmp_path, monkeypatch):
    root, listed = make_miniimagenet(tmp_path / "mi", (2, 2, 2), 3)
    cache = str(tmp_path / "cache")
    calls = []
    real_decode = images.decode_image
    monkeypatch.setattr(images, "decode_image", lambda *a: calls.append(a) or real_decode(*a))
    first, _ = miniimagenet.load(str(root), 84, cache)
    assert len(calls) == 18
    again, _ = miniimagenet.load(str(root), 84, cache)
    assert len(calls) == 18 and isinstance(again.images, np.memmap)
    np.testing.assert_array_equal(first.images, again.images)
    # Moving a class from val.csv to test.csv changes the split, so the entry.
    val = (root / "val.csv").read_text().splitlines()
    moved = [line for line in val[1:] if line.endswith(listed["val.csv"][0][1])]
    (root / "val.csv").write_text("\n".join([v for v in val if v not in moved]) + "\n")
    with open(root / "test.csv", "a") as f:
        f.write("\n".join(moved) + "\n")
    _, split = miniimagenet.load(str(root), 84, cache)
    assert len(calls) == 36 and len(split.test) == 3 and len(os.listdir(cache)) == 2


def test_bad_layouts_are_named_with_where_the_data_comes_from(tmp_path):
    with pytest.raises(UserInputError) as e:
        miniimagenet.load(str(tmp_path / "nowhere"))
    assert str(e.value) == f"mini-ImageNet folder '{tmp_path / 'nowhere'}' does not exist; {HINT}"

    root, listed = make_miniimagenet(tmp_path / "mi", (2, 2, 2), 3)
    os.rename(root / "val.csv", root / "val.bak")
    with pytest.raises(UserInputError) as e:
        miniimagenet.load(str(root))
    assert str(e.value) == f"mini-ImageNet: '{root / 'val.csv'}' is missing; {HINT}"
    os.rename(root / "val.bak", root / "val.csv")

    text = (root / "train.csv").read_text()
    (root / "train.csv").write_text("file,class\n" + text.split("\n", 1)[1])
    with pytest.raises(UserInputError) as e:
        miniimagenet.load(str(root))
    assert str(e.value) == (
        f"'{root / 'train.csv'}' line 1 must be the header 'filename,label', got "
        f"'file,class'; {HINT}"
    )
    (root / "train.csv").write_text(text + "n0000.jpg\n")
    with pytest.raises(UserInputError, match=r"train\.csv' line 8 is not '<file>\.jpg,<label>'"):
        miniimagenet.load(str(root))
    (root / "train.csv").write_text(text + "gone.jpg,n01000000\n")
    with pytest.raises(UserInputError) as e:
        miniimagenet.load(str(root))
    assert str(e.value) == (
        f"'{root / 'train.csv'}' line 8 lists 'gone.jpg', but "
        f"'{root / 'images' / 'gone.jpg'}' does not exist; {HINT}"
    )
    (root / "train.csv").write_text(text + f"{listed['test.csv'][0][0]},n01000004\n")
    with pytest.raises(UserInputError) as e:
        miniimagenet.load(str(root))
    assert str(e.value) == (
        "class 'n01000004' is in both 'train.csv' and 'test.csv'; the parts must not share classes"
    )
    (root / "train.csv").write_text(text)

    bad = root / "images" / listed["test.csv"][4][0]
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    with pytest.raises(UserInputError) as e:
        miniimagenet.load(str(root))
    assert str(e.value).startswith(f"cannot read image '{bad}' (")
    assert str(e.value).endswith("); fix or remove the file")


def test_bad_inputs_stop_the_trainer_before_any_compile(layout, tmp_path, monkeypatch):
    root, _ = layout
    monkeypatch.setattr(trainer.state_lib, "init_state", lambda *a, **k: pytest.fail("compiled"))
    cases = [
        (_config(root, tmp_path, data_dir=""), "config.data_dir is not set; pass "),
        (
            _config(tmp_path / "nowhere", tmp_path),
            f"mini-ImageNet folder '{tmp_path / 'nowhere'}' does not exist; {HINT}",
        ),
        # 4 meta-training classes cannot make 5-way episodes.
        (
            _config(root, tmp_path, ways=5),
            f"5-way episodes need 5 classes in each part of the split, but its train part "
            f"has 4 (the CSV files in '{root}'); lower --config.ways or add classes",
        ),
        # 6 images per class, 1 shot + 6 queries.
        (
            _config(root, tmp_path, num_query=6),
            "shots + queries = 7 images per class, but class 'n01000000' has only 6; lower them",
        ),
    ]
    for config, message in cases:
        with pytest.raises(UserInputError) as e:
            trainer.train_and_evaluate(config, str(tmp_path / "run"), jax.devices()[:1])
        assert str(e.value).startswith(message) and "\n" not in str(e.value)
        assert not (tmp_path / "run").exists()


def test_configs_carry_the_papers_settings():
    for variant in miniimagenet_configs.VARIANTS:
        checks.validate_config(miniimagenet_configs.get_config(variant))
    for variant, (shots, meta_batch) in {"5w1s": (1, 4), "5w5s": (5, 2)}.items():
        c = miniimagenet_configs.get_config(variant)
        assert (c.task, c.ways, c.shots, c.num_query, c.meta_batch_size) == (
            "miniimagenet",
            5,
            shots,
            15,
            meta_batch,
        )
        assert (c.inner_steps, c.eval_inner_steps, c.inner_lr, c.meta_lr) == (5, 10, 0.01, 1e-3)
        assert (c.num_steps, c.first_order, c.algorithm, c.image_size) == (
            60_000,
            False,
            "maml",
            84,
        )
        m = c.model
        assert (m.filters, m.blocks, m.strides, m.pool) == (32, 4, 1, True)
    for variant in ("5w1s", "5w5s"):
        named = importlib.import_module(f"configs.miniimagenet_{variant}")
        assert named.get_config() == miniimagenet_configs.get_config(variant)


def test_the_papers_net_keeps_omniglots_names_and_splits_for_anil():
    omniglot_net = models.ConvNet(num_classes=5, filters=8)
    net = models.ConvNet(num_classes=5, filters=8, strides=1, pool=True)
    x = jax.random.uniform(jax.random.key(0), (3, 84, 84, 3))
    params = net.init(jax.random.key(1), x)["params"]
    other = omniglot_net.init(jax.random.key(1), x)["params"]
    assert jax.tree.structure(params) == jax.tree.structure(other)
    assert params["head"]["kernel"].shape == (5 * 5 * 8, 5)  # 84 -> 42 -> 21 -> 10 -> 5
    assert other["head"]["kernel"].shape == (6 * 6 * 8, 5)  # stride 2: 84 -> 42 -> 21 -> 11 -> 6
    logits = net.apply({"params": params}, x)
    for impl in ("im2col", "slices"):
        patched = dataclasses.replace(net, conv_impl=impl)
        np.testing.assert_allclose(
            patched.apply({"params": params}, x), logits, rtol=1e-4, atol=1e-5
        )
    body = {k: v for k, v in params.items() if k != models.HEAD}
    features = net.apply({"params": body}, x, part="body")
    head = net.apply({"params": {"head": params["head"]}}, features, part="head")
    np.testing.assert_allclose(head, logits, rtol=1e-6)


def _one_task(root, tmp_path, algorithm):
    config = _config(root, tmp_path, algorithm=algorithm)
    problem = make_problem(config)
    task = problem.family.episodes("train", 1, 2).episode(0, 0, 0, 0)
    task = jax.tree.map(jnp.asarray, task)
    params = problem.model.init(jax.random.key(0), task.support_x)["params"]
    return config, problem, task, problem.algorithm.init(params)


def test_anil_with_the_body_head_split_runs_the_papers_net_as_a_whole(layout, tmp_path):
    root, _ = layout
    config, problem, task, meta = _one_task(root, tmp_path, "anil")
    whole = algorithms.make_algorithm("anil", problem.loss_fn, inner_config(config))
    got, (got_loss, _) = jax.jit(problem.algorithm.task_grad)(meta, task, 0)
    want, (want_loss, _) = jax.jit(whole.task_grad)(meta, task, 0)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    assert np.linalg.norm(got["params"]["Conv_0"]["kernel"]) > 0


@pytest.mark.parametrize("bn_mode", ["auto", "per_step_running"])
def test_mamlpp_per_step_batch_norm_on_the_papers_net(bn_mode, layout, tmp_path):
    root, _ = layout
    config = _config(root, tmp_path, algorithm="mamlpp")
    config.model.bn_mode = bn_mode
    problem = make_problem(config)
    task = jax.tree.map(jnp.asarray, problem.family.episodes("train", 1, 2).episode(0, 0, 0, 0))
    params = problem.model.init(jax.random.key(0), task.support_x)["params"]
    meta = problem.algorithm.init(params)
    running = bn_mode == "per_step_running"
    assert problem.family.bn_mode == ("per_step_running" if running else "per_step_support")
    assert "inner_lr" in meta
    grads, _ = jax.jit(problem.algorithm.task_grad)(meta, task, 0)
    for i in range(4):  # every block: 1 training step + the query's slot
        if running:  # the per-step batch statistics, for the running averages
            stats = grads["params"][f"StepNorm_{i}"]["running_mean"]
        else:  # the per-step scale, its gradient through the pooled blocks
            stats = grads["params"][f"SupportNorm_{i}"]["scale"]
        assert stats.shape == (2, 4) and np.all(np.isfinite(stats))
    assert np.all(np.isfinite(grads["inner_lr"]["head"]["kernel"]))
    # Either way a query image is classified alone as in its batch.
    adapted = problem.algorithm.adapt(meta, task.support_x, task.support_y, 1)
    apply = algorithms.make_apply(problem.model)
    context = None if running else task.support_x
    batch = apply(adapted, task.query_x, 1, context)
    alone = jnp.concatenate([apply(adapted, task.query_x[i : i + 1], 1, context) for i in range(4)])
    np.testing.assert_allclose(batch, alone, rtol=1e-5, atol=1e-5)


def test_tiny_config_trains_and_meta_tests(layout, tmp_path):
    root, _ = layout
    workdir = tmp_path / "run"
    trainer.train_and_evaluate(_config(root, tmp_path), str(workdir), jax.devices()[:2])
    report = evaluator.evaluate(str(workdir), num_tasks=4, max_inner_steps=2, num_query=3)
    (result,) = report["results"]
    assert (report["task"], result["ways"], result["shots"]) == ("miniimagenet", 2, 1)
    assert all(0.0 <= m <= 1.0 for m in result["mean"])
    assert (workdir / "eval" / "example_episode.png").stat().st_size > 0
