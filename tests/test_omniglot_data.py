"""Omniglot reader, class splits, episodes and the conv net, on generated and real data."""

import logging
import os
import pathlib
import zipfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_omniglot_set, zip_folder

from configs import omniglot as omniglot_configs
from maml_dist import algorithms, convs, models, tasks
from maml_dist.checks import UserInputError
from maml_dist.data import episodes, omniglot, splits
from maml_dist.types import TaskBatch

REAL = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"


@pytest.fixture
def tree(tmp_path):
    small1 = make_omniglot_set(tmp_path, "images_background_small1", {"Alpha": 3, "Beta": 2})
    small2 = make_omniglot_set(
        tmp_path / "other", "images_background_small2", {"Beta": 2, "Gamma": 2}
    )
    return tmp_path, small1, small2


def test_folder_and_zip_give_the_same_arrays(tree, tmp_path):
    _, small1, _ = tree
    from_folder = omniglot.load([str(small1)])
    from_zip = omniglot.load([str(zip_folder(small1))])
    assert from_folder.images.shape == (20, 28, 28)
    assert from_folder.images.dtype == np.uint8
    np.testing.assert_array_equal(from_folder.images, from_zip.images)
    assert from_folder.classes == from_zip.classes
    assert from_folder.classes[0] == ("Alpha", "character01")
    assert sorted(set(from_folder.drawers.tolist())) == [1, 2, 3, 4]
    # Ink is 1 (255): the drawn bar is bright, the background dark.
    assert from_folder.images.mean() < 60
    assert from_folder.images.max() == 255


def test_duplicates_across_roots_are_counted_once(tree):
    _, small1, small2 = tree
    # Beta character01-02 exist under both roots with the same file names (same images).
    data = omniglot.load([str(small1), str(zip_folder(small2))])
    assert len(data.classes) == 3 + 2 + 2
    assert len(data.images) == 7 * 4
    assert data.alphabets == ("Alpha", "Beta", "Gamma")


def test_find_sources_takes_zips_or_folders(tree):
    root, small1, small2 = tree
    zip_folder(small2)
    os.rename(small2.with_suffix(".zip"), root / "images_background_small2.zip")
    found = omniglot.find_sources(
        str(root), ("images_background_small1", "images_background_small2")
    )
    assert found == [str(small1), str(root / "images_background_small2.zip")]


def test_cache_is_used_and_keyed_by_content(tree, tmp_path, caplog):
    _, small1, _ = tree
    archive = zip_folder(small1)
    cache = tmp_path / "cache"
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="absl")
    first = omniglot.load([str(archive)], cache_dir=str(cache))
    # The first read reports its decoding; a read from the cache decodes nothing.
    n = len(first.images)
    decoding = [r.getMessage() for r in caplog.records if "decoding images" in r.getMessage()]
    assert decoding and decoding[-1].startswith(f"decoding images: {n:,}/{n:,} images")
    caplog.clear()
    (cached,) = list(cache.iterdir())
    again = omniglot.load([str(archive)], cache_dir=str(cache))
    assert not any("decoding" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(first.images, again.images)
    assert again.classes == first.classes
    # Changing the source changes the key: a second cache file appears.
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr(
            "images_background_small1/Alpha/character09/0099_01.png",
            (small1 / "Alpha" / "character01" / "0001_01.png").read_bytes(),
        )
    changed = omniglot.load([str(archive)], cache_dir=str(cache))
    assert len(changed.images) == len(first.images) + 1
    assert len(list(cache.iterdir())) == 2 and cached.exists()


def test_bad_sources_name_the_path(tree, tmp_path):
    _, small1, _ = tree
    with pytest.raises(UserInputError, match=r"does not exist; get images_background\.zip"):
        omniglot.load([str(tmp_path / "nope.zip")])
    with pytest.raises(UserInputError, match=r"does not exist; get images_background\.zip"):
        omniglot.find_sources(str(tmp_path / "missing_dir"), ("images_background",))
    with pytest.raises(UserInputError, match=r"images_evaluation\.zip' nor a folder"):
        omniglot.find_sources(str(tmp_path), ("images_evaluation",))
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(UserInputError, match=f"'{corrupt}' is not a readable zip file"):
        omniglot.load([str(corrupt)])
    empty = tmp_path / "empty.zip"
    zipfile.ZipFile(empty, "w").close()
    with pytest.raises(UserInputError, match=f"'{empty}' holds no Omniglot images"):
        omniglot.load([str(empty)])
    bad = small1 / "Alpha" / "character01" / "0001_05.png"
    bad.write_text("not an image")
    with pytest.raises(UserInputError, match=f"'{bad}' is not an image"):
        omniglot.load([str(small1)])
    with pytest.raises(UserInputError, match="is not an image"):
        omniglot.load([str(zip_folder(small1))])


def test_alphabet_split_is_disjoint_by_alphabet(tree):
    _, small1, small2 = tree
    data = omniglot.load([str(small1), str(small2)])
    split = splits.alphabet_split(data, held_out=("Gamma",))
    test_alphabets = {data.classes[i][0] for i in split.test}
    train_alphabets = {data.classes[i][0] for i in split.train}
    assert test_alphabets == {"Gamma"} and "Gamma" not in train_alphabets
    assert len(split.train) + len(split.test) == len(data.classes)
    by_seed = splits.alphabet_split(data, num_held_out=1, seed=3)
    again = splits.alphabet_split(data, num_held_out=1, seed=3)
    np.testing.assert_array_equal(by_seed.test, again.test)
    with pytest.raises(UserInputError, match="unknown alphabet"):
        splits.alphabet_split(data, held_out=("Klingon",))
    with pytest.raises(UserInputError, match="leaving none of the 3 to meta-train on"):
        splits.alphabet_split(data, num_held_out=3)
    with pytest.raises(UserInputError, match="at least one of the 3 alphabets"):
        splits.alphabet_split(data, num_validation=1)


def test_alphabet_split_validation_is_held_out_from_training_never_from_the_test(tree):
    _, small1, small2 = tree
    data = omniglot.load([str(small1), str(small2)])
    alphabet = lambda classes: {data.classes[i][0] for i in classes}  # noqa: E731
    named = splits.alphabet_split(data, held_out=("Gamma",), validation=("Alpha",))
    assert (alphabet(named.train), alphabet(named.validation)) == ({"Beta"}, {"Alpha"})
    assert alphabet(named.test) == {"Gamma"}
    for seed in range(6):  # drawn by seed: never a test alphabet, never empty
        drawn = splits.alphabet_split(data, held_out=("Gamma",), num_validation=1, seed=seed)
        assert len(alphabet(drawn.validation)) == 1
        assert not alphabet(drawn.validation) & ({"Gamma"} | alphabet(drawn.train))
        assert drawn.train.size and drawn.test.size
    with pytest.raises(UserInputError, match=r"\['Gamma'\] are named for both validation"):
        splits.alphabet_split(data, held_out=("Gamma",), validation=("Gamma",))
    with pytest.raises(UserInputError, match="leaving none of the 3 to meta-train on"):
        splits.alphabet_split(data, held_out=("Gamma",), num_validation=2)
    # Without validation alphabets (runs made before they existed) no part stands in for it.
    legacy = splits.alphabet_split(data, held_out=("Gamma",))
    assert legacy.validation is None
    with pytest.raises(UserInputError, match="has no validation classes"):
        legacy.part("validation")
    with pytest.raises(ValueError, match="part must be one of"):
        legacy.part("val")
    with pytest.raises(ValueError, match="validation and meta-test classes overlap"):
        splits.ClassSplit(train=np.arange(2), validation=np.arange(2, 4), test=np.arange(3, 5))


def test_standard_split_is_seeded_and_disjoint(tree):
    _, small1, small2 = tree
    data = omniglot.load([str(small1), str(small2)])
    split = splits.standard_split(data, num_train=4, seed=1, num_validation=1)
    assert len(split.train) == 3 and len(split.validation) == 1 and len(split.test) == 3
    assert len(set(split.train) | set(split.validation) | set(split.test)) == 7
    np.testing.assert_array_equal(split.train, splits.standard_split(data, 4, 1, 1).train)
    assert splits.standard_split(data, 4, 1, num_validation=0).validation is None
    with pytest.raises(UserInputError, match="needs more than 1200 characters, the data has 7"):
        splits.standard_split(data)


def test_episodes_shapes_labels_and_determinism(tree):
    _, small1, small2 = tree
    data = omniglot.load([str(small1), str(small2)])
    sampler = episodes.EpisodeSampler(
        data, np.arange(7), ways=3, shots=1, queries=2, rotations=True
    )
    a = sampler.episode(seed=0, stream=0, step=5, index=2)
    assert a.support_x.shape == (3, 28, 28, 1) and a.query_x.shape == (6, 28, 28, 1)
    np.testing.assert_array_equal(a.support_y, [0, 1, 2])
    np.testing.assert_array_equal(a.query_y, [0, 0, 1, 1, 2, 2])
    # A pure function of (seed, stream, step, index), whatever batch it is built in.
    batch = sampler.batch(0, 0, 5, [7, 2, 9])
    chex.assert_trees_all_equal(jax.tree.map(lambda x: x[1], batch), a)
    # Labels are permuted per episode: a class's label is not tied to its index. Find each
    # support image's class (rotation included) and collect the labels each class gets.
    plain = episodes.EpisodeSampler(data, np.arange(7), ways=3, shots=1, queries=0, rotations=False)
    class_of = {data.images[i].tobytes(): int(data.labels[i]) for i in range(len(data.labels))}
    labels_of, unsorted = {}, 0
    for s in range(60):
        e = plain.episode(0, 0, s, 0)
        classes = [class_of[x[..., 0].tobytes()] for x in e.support_x]
        for c, y in zip(classes, e.support_y, strict=True):
            labels_of.setdefault(c, set()).add(int(y))
        unsorted += classes != sorted(classes)  # labels in class order would never be
    assert unsorted > 20
    assert all(len(labels) == 3 for labels in labels_of.values())  # every class, every label
    with pytest.raises(UserInputError, match="10-way episodes need at least 10 classes"):
        episodes.EpisodeSampler(data, np.arange(2), ways=10, shots=1, queries=1, rotations=False)
    with pytest.raises(UserInputError, match="shots \\+ queries = 5 images per class"):
        episodes.EpisodeSampler(data, np.arange(7), ways=2, shots=2, queries=3, rotations=False)


def test_rotations_are_extra_classes_of_the_same_split(tree):
    _, small1, _ = tree
    data = omniglot.load([str(small1)])
    sampler = episodes.EpisodeSampler(
        data, np.arange(2), ways=8, shots=1, queries=0, rotations=True
    )
    ep = sampler.episode(0, 0, 0, 0)  # all 2 x 4 classes: each base image in 4 rotations
    base = {data.images[i].tobytes() for i in np.flatnonzero(np.isin(data.labels, [0, 1]))}
    for image in ep.support_x[..., 0]:
        assert any(np.rot90(image, k).tobytes() in base for k in range(4))


def test_conv_net_shapes_and_batch_statistics():
    model = models.ConvNet(num_classes=5)
    x = jnp.zeros((7, 28, 28, 1), jnp.uint8)
    params = model.init(jax.random.key(0), x)["params"]
    assert model.apply({"params": params}, x).shape == (7, 5)
    kernels = [p["kernel"].shape for k, p in sorted(params.items()) if k.startswith("Conv")]
    assert kernels == [(3, 3, 1, 64)] + [(3, 3, 64, 64)] * 3
    assert params["head"]["kernel"].shape == (2 * 2 * 64, 5)
    # Transductive batch norm: an image's output depends on the rest of its batch.
    rng = np.random.default_rng(0)
    batch = jnp.asarray(rng.integers(0, 255, (4, 28, 28, 1)), jnp.uint8)
    other = batch.at[1:].set(jnp.asarray(rng.integers(0, 255, (3, 28, 28, 1)), jnp.uint8))
    out_a = model.apply({"params": params}, batch)[0]
    out_b = model.apply({"params": params}, other)[0]
    assert not np.allclose(out_a, out_b)


def test_vmap_and_loop_task_batching_agree_on_the_conv_net(tree):
    _, small1, small2 = tree
    data = omniglot.load([str(small1), str(small2)])
    sampler = episodes.EpisodeSampler(
        data, np.arange(7), ways=3, shots=1, queries=2, rotations=False
    )
    tasks = TaskBatch(*map(jnp.asarray, sampler.batch(0, 0, 0, range(4)).__dict__.values()))
    model = models.ConvNet(num_classes=3, filters=8)
    params = model.init(jax.random.key(0), tasks.support_x[0])["params"]

    def loss_fn(p, x, y):
        logits = model.apply({"params": p}, x)
        return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(len(y)), y])

    maml = algorithms.make_algorithm("maml", loss_fn, algorithms.InnerConfig(lr=0.4, steps=1))

    def per_task(task):
        grads, (after, _) = maml.task_grad({"params": params}, task, 0)
        return after, loss_fn(params, task.query_x, task.query_y), grads["params"]

    after_v, before_v, grads_v = jax.jit(jax.vmap(per_task))(tasks)
    after_l, before_l, grads_l = jax.jit(lambda t: jax.lax.map(per_task, t))(tasks)
    np.testing.assert_allclose(after_v, after_l, rtol=1e-5)
    np.testing.assert_allclose(before_v, before_l, rtol=1e-5)
    # Compared as whole vectors: conv biases feeding batch norm have an exactly-zero true
    # gradient, so their float noise (~1e-7) differs in relative terms between programs.
    scale = np.linalg.norm(np.concatenate([np.ravel(x) for x in jax.tree.leaves(grads_v)]))
    for g_v, g_l in zip(jax.tree.leaves(grads_v), jax.tree.leaves(grads_l), strict=True):
        assert np.linalg.norm(np.asarray(g_v) - np.asarray(g_l)) <= 1e-5 * scale


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/omniglot is not on this machine")
def test_real_minimal_splits(tmp_path):
    sources = omniglot.find_sources(
        str(REAL), ("images_background_small1", "images_background_small2")
    )
    data = omniglot.load(sources, cache_dir=str(tmp_path))
    # 8 alphabets, 242 distinct characters (Greek and Latin are in both), 20 drawers each.
    assert len(data.alphabets) == 8 and len(data.classes) == 242
    assert data.images.shape == (242 * 20, 28, 28)
    assert sorted(set(data.drawers.tolist())) == list(range(1, 21))
    split = splits.alphabet_split(data, held_out=("Greek", "Korean"))
    assert not {data.classes[i][0] for i in split.train} & {"Greek", "Korean"}


@pytest.mark.parametrize("impl", ["im2col", "slices"])
def test_patch_convs_equal_xla_conv_in_value_and_second_order_gradient(impl):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((6, 28, 28, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 5, 6))
    xla, im2col = models.ConvNet(5, filters=8), models.ConvNet(5, filters=8, conv_impl=impl)
    params = xla.init(jax.random.key(0), x)["params"]
    assert jax.tree.structure(params) == jax.tree.structure(
        im2col.init(jax.random.key(0), x)["params"]
    )

    def maml_loss(model):
        def loss(p, xx):
            logits = model.apply({"params": p}, xx)
            return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(6), y])

        def outer(p):  # one inner step, then the loss: a second-order meta-gradient
            inner = jax.tree.map(lambda a, g: a - 0.4 * g, p, jax.grad(loss)(p, x))
            return loss(inner, x[::-1])

        return outer

    np.testing.assert_allclose(
        xla.apply({"params": params}, x), im2col.apply({"params": params}, x), atol=1e-5
    )
    chex.assert_trees_all_close(
        jax.grad(maml_loss(xla))(params), jax.grad(maml_loss(im2col))(params), rtol=1e-4, atol=1e-5
    )


def test_auto_conv_is_slices_on_cpu_and_xla_on_accelerators(tmp_path):
    assert models.resolve_conv_impl("auto", "cpu") == "slices"  # "im2col" before 0.5
    assert models.resolve_conv_impl("auto", "gpu") == "xla"
    assert models.resolve_conv_impl("auto", "tpu") == "xla"
    for name in ("xla", "im2col", "slices"):
        assert models.resolve_conv_impl(name, "cpu") == name
        assert models.resolve_conv_impl(name, "gpu") == name
    # The configs' default builds the slices network here (the tests run on CPU).
    config = omniglot_configs.get_config("tiny")
    for name in config.omniglot.sets:
        (tmp_path / name).mkdir()  # found, never read: a family reads images on first use
    config.data_dir = str(tmp_path)
    assert config.model.conv_impl == "auto"
    assert tasks.make_task_family(config).make_model().conv_impl == "slices"


@pytest.mark.parametrize(
    ("shape", "strides"),
    [
        ((2, 28, 28, 1), 2),
        ((2, 14, 14, 5), 2),
        ((2, 7, 7, 3), 2),
        ((2, 84, 84, 3), 1),
        ((1, 5, 5, 2), 1),
    ],
)
def test_slice_patches_are_the_grouped_convolutions_patches_exactly(shape, strides):
    x = jax.random.normal(jax.random.key(0), shape)
    expected = jax.lax.conv_general_dilated_patches(
        x, (3, 3), (strides, strides), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_array_equal(convs.slice_patches(x, strides), expected)
