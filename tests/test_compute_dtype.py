"""`config.model.compute_dtype`: bfloat16 activations with float32 parameters and loss.

Tiny networks (8x8 images, 2 blocks of 8 filters, 3-way), so every test runs in seconds.
"""

import json
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from helpers import tiny_config

import maml_dist as md
from configs import omniglot as omniglot_configs
from configs import sinusoid as sinusoid_configs
from maml_dist import algorithms, checks, convs, models, norms, resume_checks, tasks
from maml_dist.errors import UserInputError
from maml_dist.types import HEAD, TaskBatch

WAYS, SHOTS, QUERIES = 3, 1, 2
IMPLS = ("xla", "im2col")
# The convs that compute in the compute dtype (slices came after compute_dtype).
DTYPE_IMPLS = (*IMPLS, "slices")
BN_MODES = models.BN_MODES


def _task(seed: int = 0) -> TaskBatch:
    rng = np.random.default_rng(seed)

    def images(k):
        return jnp.asarray(rng.integers(0, 256, (WAYS * k, 8, 8, 1)), jnp.uint8)

    labels = lambda k: jnp.repeat(jnp.arange(WAYS), k)  # noqa: E731
    return TaskBatch(images(SHOTS), labels(SHOTS), images(QUERIES), labels(QUERIES))


def _conv(dtype: str, conv_impl: str = "im2col", bn_mode: str = "transductive"):
    return models.ConvNet(
        WAYS, filters=8, blocks=2, conv_impl=conv_impl, bn_mode=bn_mode, compute_dtype=dtype
    )


def _xent(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _maml(model, first_order: bool = False):
    def loss(p, x, y):
        return _xent(model.apply({"params": p}, x), y)

    inner = algorithms.InnerConfig(lr=0.4, steps=1, first_order=first_order)
    return algorithms.make_algorithm("maml", loss, inner)


def _params(model, seed: int = 0):
    return model.init(jax.random.key(seed), _task().support_x)["params"]


def _dtypes(tree) -> set:
    """The dtypes of the floating-point leaves (Adam's step count is an integer)."""
    return {a.dtype for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)}


def _flat(tree) -> jax.Array:
    return jnp.concatenate([a.ravel() for a in jax.tree.leaves(tree)])


def test_parameters_stay_float32_through_init_and_a_meta_step():
    model16 = _conv("bfloat16", "slices")  # the CPU trainer's conv ("auto", since 0.5)
    params = _params(model16)
    # The same initial values as the float32 net: the dtype changes only the compute.
    assert _dtypes(params) == {jnp.dtype(jnp.float32)}
    for a, b in zip(
        jax.tree.leaves(params), jax.tree.leaves(_params(_conv("float32"))), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    algorithm = _maml(model16)
    params = algorithm.init(params)
    tx = optax.adam(1e-2)
    tasks_ = jax.tree.map(lambda *xs: jnp.stack(xs), _task(0), _task(1))

    @jax.jit
    def meta_step(p, opt_state):
        grads = jax.vmap(lambda t: algorithm.task_grad(p, t, 0)[0])(tasks_)
        grads = jax.tree.map(lambda g: g.mean(0), grads)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, grads

    new, opt_state, grads = meta_step(params, tx.init(params))
    assert _dtypes(grads) == _dtypes(new) == _dtypes(opt_state) == {jnp.dtype(jnp.float32)}
    assert not np.array_equal(_flat(new), _flat(params))  # the step did update them


def test_sinusoid_learner_keeps_float32_parameters_and_loss_in_bfloat16():
    # The real sharded meta-step and Adam of the Python API, 20 meta-steps.
    config = md.MetaConfig(meta_batch_size=8, inner=md.InnerConfig(lr=0.01, steps=1))
    learner = md.make_learner(config, md.Sinusoid(compute_dtype="bfloat16"))
    assert learner.model.compute_dtype == "bfloat16"
    state = learner.init()
    state, metrics = learner.run(state, 20)
    assert _dtypes(state.meta_params) == _dtypes(state.opt_state) == {jnp.dtype(jnp.float32)}
    assert metrics["meta_loss"].dtype == jnp.float32
    assert np.isfinite(metrics["meta_loss"]).all()
    assert learner.model.apply({"params": state.meta_params["params"]}, jnp.ones((4, 1))).dtype == (
        jnp.float32
    )


@pytest.mark.parametrize("conv_impl", DTYPE_IMPLS)
@pytest.mark.parametrize("bn_mode", BN_MODES)
def test_bfloat16_forward_is_float32_and_close_to_the_float32_forward(conv_impl, bn_mode):
    x = _task().query_x
    model16 = _conv("bfloat16", conv_impl, bn_mode)
    params = _params(_conv("float32", conv_impl, bn_mode))
    kwargs = {"train": True} if bn_mode == "per_step_running" else {}
    want = _conv("float32", conv_impl, bn_mode).apply({"params": params}, x, **kwargs)
    got = model16.apply({"params": params}, x, **kwargs)
    assert got.dtype == jnp.float32
    # Every conv and matrix product (the head's too) takes bfloat16 operands.
    ops = jax.make_jaxpr(lambda p: model16.apply({"params": p}, x, **kwargs))(params)
    matmuls = [e for e in ops.eqns if e.primitive.name in ("dot_general", "conv_general_dilated")]
    # Two blocks and the head; with im2col each block's patches are a conv too (slices:
    # not).
    assert len(matmuls) == {"xla": 3, "im2col": 5, "slices": 3}[conv_impl], ops
    assert all(v.aval.dtype == jnp.bfloat16 for e in matmuls for v in e.invars), matmuls
    # bfloat16 keeps 8 significant bits: each rounding is off by at most 2^-9 (0.2%)
    # relative. Input, conv operands and output, normalised output and head operands of two
    # blocks are about 10 roundings in a row, so the logits may be off by ~2% of their
    # scale; allow 3% of the largest |logit| (measured: 0.6% with batch norm, 0.5%
    # without). A float32 path would be exactly equal, which the `not array_equal` below
    # refuses: the net must really compute in bfloat16.
    scale = float(jnp.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=0.03 * scale)
    assert not np.array_equal(got, want)
    # The body's features (ANIL's input to the head) are float32 too.
    assert model16.apply({"params": params}, x, part="body", **kwargs).dtype == jnp.float32


def test_batch_norm_statistics_are_computed_in_float32():
    # Values 1000, 1004, ..., 1028 (standard deviation 9.2): bfloat16's spacing there is
    # 4 (8 above 1024), so their mean 1014 rounded to bfloat16 is off by 2, which shifts
    # every normalised value by 0.22. In float32 the only error is the final rounding of
    # the normalised values to bfloat16 (2^-9 relative, 1/128 absolute below 4).
    x = (1000 + 4 * jnp.arange(8.0)).reshape(2, 2, 2, 1).astype(jnp.bfloat16)
    x32 = x.astype(jnp.float32)
    norm = norms.BatchStatNorm()
    params = norm.init(jax.random.key(0), x32)
    got = norm.apply(params, x)
    assert got.dtype == jnp.bfloat16
    want = norm.apply(params, x32)
    np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=2**-8, atol=2**-8)
    step = norms.StepNorm(slots=2)
    params = step.init(jax.random.key(0), x32, 0, True)
    got, sown = step.apply(params, x, 0, True, mutable=[norms.STEP_STATS])
    want, sown32 = step.apply(params, x32, 0, True, mutable=[norms.STEP_STATS])
    np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=2**-8, atol=2**-8)
    # The sown statistics (averaged into the float32 running ones) are float32 and exact.
    assert _dtypes(sown) == {jnp.dtype(jnp.float32)}
    for a, b in zip(jax.tree.leaves(sown), jax.tree.leaves(sown32), strict=True):
        np.testing.assert_array_equal(a, b)


# (slices runs the same bfloat16 product as im2col on other patches: its forward is tested.)
@pytest.mark.parametrize("conv_impl", ["xla", "im2col"])
def test_bfloat16_second_order_meta_gradient_points_the_float32_way(conv_impl):
    task = _task()
    params = _params(_conv("float32", conv_impl))

    def meta_grad(dtype, first_order=False):
        algorithm = _maml(_conv(dtype, conv_impl), first_order)
        grads = jax.jit(lambda p: algorithm.task_grad(p, task, 0)[0])(algorithm.init(params))
        assert _dtypes(grads) == {jnp.dtype(jnp.float32)}
        return _flat(grads)

    def cos(a, b):
        return float(a @ b / jnp.linalg.norm(a) / jnp.linalg.norm(b))

    want, got = meta_grad("float32"), meta_grad("bfloat16")
    assert np.isfinite(got).all()
    # Measured on this net: cosine 0.997-0.9999 over seeds, 0.994 with three inner steps;
    # the largest error is the first conv's kernel (~17% of it: its gradient is a sum of
    # terms that batch norm makes cancel). Dropping the second-order terms moves the
    # gradient much further (cosine 0.48-0.65 to the second-order one, asserted below), so
    # 0.99 tells rounding from a lost or wrong term.
    assert cos(got, want) > 0.99, cos(got, want)
    assert np.linalg.norm(got - want) < 0.15 * np.linalg.norm(want)
    first_order = meta_grad("float32", first_order=True)
    assert cos(first_order, want) < 0.9


# The networks as they were before compute dtypes existed (models.py on main at commit
# bd3dde5), copied op for op (slice_patches, unchanged, is used as it is): float32 must
# still compute exactly this.
class _BeforeBatchStatNorm(nn.Module):
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x):
        axes = tuple(range(x.ndim - 1))
        mean = x.mean(axes)
        var = jnp.mean(jnp.square(x - mean), axes)
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        offset = self.param("offset", nn.initializers.zeros, (x.shape[-1],))
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + offset


class _BeforeStepNorm(nn.Module):
    slots: int
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, step, train):
        shape = (self.slots, x.shape[-1])
        scale = self.param("scale", nn.initializers.ones, shape)
        offset = self.param("offset", nn.initializers.zeros, shape)
        running_mean = self.param("running_mean", nn.initializers.zeros, shape)
        running_var = self.param("running_var", nn.initializers.ones, shape)
        slot = jnp.minimum(step, self.slots - 1)
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = x.mean(axes)
            var = jnp.mean(jnp.square(x - mean), axes)
            self.sow(norms.STEP_STATS, "mean", jax.lax.stop_gradient(mean))
            self.sow(norms.STEP_STATS, "var", jax.lax.stop_gradient(var))
        else:
            mean = jax.lax.stop_gradient(running_mean[slot])
            var = jax.lax.stop_gradient(running_var[slot])
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale[slot] + offset[slot]


class _BeforePatchConv(nn.Module):
    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        patches = jax.lax.conv_general_dilated_patches(
            x,
            (3, 3),
            (self.strides, self.strides),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        matrix = kernel.transpose(2, 0, 1, 3).reshape(-1, self.features)
        return patches @ matrix + bias


class _BeforeSliceConv(_BeforePatchConv):
    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        matrix = kernel.transpose(2, 0, 1, 3).reshape(-1, self.features)
        return convs.slice_patches(x, self.strides) @ matrix + bias


class _BeforeConvNet(nn.Module):
    num_classes: int
    filters: int = 64
    blocks: int = 4
    conv_impl: str = "xla"
    bn_mode: str = "transductive"
    bn_slots: int = 2
    strides: int = 2

    @nn.compact
    def __call__(self, x, step=0, train=False):
        if x.dtype == jnp.uint8:
            x = x.astype(jnp.float32) / 255.0
        for i in range(self.blocks):
            if self.conv_impl in ("im2col", "slices"):
                conv = _BeforePatchConv if self.conv_impl == "im2col" else _BeforeSliceConv
                x = conv(self.filters, strides=self.strides, name=f"Conv_{i}")(x)
            else:
                x = nn.Conv(
                    self.filters, (3, 3), strides=self.strides, padding="SAME", name=f"Conv_{i}"
                )(x)
            if self.bn_mode == "transductive":
                x = _BeforeBatchStatNorm(name=f"BatchStatNorm_{i}")(x)
            elif self.bn_mode == "per_step_running":
                x = _BeforeStepNorm(self.bn_slots, name=f"StepNorm_{i}")(x, step, train)
            x = nn.relu(x)
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes, name=HEAD)(x)


class _BeforeMLP(nn.Module):
    hidden_sizes: Sequence[int]
    out_features: int

    @nn.compact
    def __call__(self, x):
        for width in self.hidden_sizes:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.out_features, name=HEAD)(x)


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


# "per_step_support" came after compute dtypes: no network before them to compare with.
@pytest.mark.parametrize("conv_impl", DTYPE_IMPLS)
@pytest.mark.parametrize("bn_mode", ("transductive", "per_step_running", "none"))
def test_float32_is_bit_identical_to_the_network_before_compute_dtypes(conv_impl, bn_mode):
    before = _BeforeConvNet(WAYS, filters=8, blocks=2, conv_impl=conv_impl, bn_mode=bn_mode)
    nets = [_conv("float32", conv_impl, bn_mode)]
    # compute_dtype unset is float32.
    nets.append(models.ConvNet(WAYS, filters=8, blocks=2, conv_impl=conv_impl, bn_mode=bn_mode))
    task = _task()
    params = _params(before)
    kwargs = {"train": True} if bn_mode == "per_step_running" else {}
    mutable = [norms.STEP_STATS] if kwargs else False
    want = before.apply({"params": params}, task.query_x, mutable=mutable, **kwargs)

    def maml_grad(model):
        def loss(p, x, y):
            return _xent(model.apply({"params": p}, x), y)

        algorithm = algorithms.make_algorithm("maml", loss, algorithms.InnerConfig(lr=0.4))
        return jax.jit(lambda p: algorithm.task_grad(p, task, 0)[0])(algorithm.init(params))

    for net in nets:
        _assert_trees_equal(_params(net), params)
        got = net.apply({"params": params}, task.query_x, mutable=mutable, **kwargs)
        _assert_trees_equal(got, want)
    # The default mode, compiled so that fusion is compared too (slices: forward only).
    if bn_mode == "transductive" and conv_impl != "slices":
        _assert_trees_equal(maml_grad(nets[0]), maml_grad(before))


def test_float32_mlp_is_bit_identical_to_the_network_before_compute_dtypes():
    before = _BeforeMLP((40, 40), 1)
    net = md.Sinusoid().make_model()
    assert net.compute_dtype == "float32"
    x = jnp.linspace(-5.0, 5.0, 20).reshape(-1, 1)
    params = before.init(jax.random.key(0), x)["params"]
    _assert_trees_equal(net.init(jax.random.key(0), x)["params"], params)
    _assert_trees_equal(net.apply({"params": params}, x), before.apply({"params": params}, x))

    def maml_grad(model):
        def loss(p, x, y):
            return jnp.mean(jnp.square(model.apply({"params": p}, x) - y))

        algorithm = algorithms.make_algorithm("maml", loss, algorithms.InnerConfig(lr=0.01))
        task = TaskBatch(x[:10], jnp.sin(x[:10]), x[10:], jnp.sin(x[10:]))
        return jax.jit(lambda p: algorithm.task_grad(p, task, 0)[0])(algorithm.init(params))

    _assert_trees_equal(maml_grad(net), maml_grad(before))


def test_configs_pass_the_dtype_to_the_network(tmp_path):
    for name in omniglot_configs.get_config("tiny").omniglot.sets:
        (tmp_path / name).mkdir()  # found, never read: a family reads images on first use
    for get_config in (sinusoid_configs.get_config, omniglot_configs.get_config):
        config = get_config("tiny")
        if "data_dir" in config:
            config.data_dir = str(tmp_path)
        assert config.model.compute_dtype == "float32"
        config.model.compute_dtype = "bfloat16"
        assert tasks.make_task_family(config).make_model().compute_dtype == "bfloat16"
        # A config saved before the field existed builds a float32 network.
        del config.model["compute_dtype"]
        assert tasks.make_task_family(config).make_model().compute_dtype == "float32"


def test_validation_names_the_field_the_values_and_the_fix():
    config = tiny_config()
    config.model.compute_dtype = "float16"
    with pytest.raises(UserInputError) as raised:
        checks.validate_config(config)
    assert str(raised.value) == (
        "config.model.compute_dtype must be 'float32' or 'bfloat16', got 'float16'; pass "
        "--config.model.compute_dtype=float32 (the default) or "
        "--config.model.compute_dtype=bfloat16 (float32 parameters and loss)"
    )
    config.model.compute_dtype = "bfloat16"
    checks.validate_config(config)


def test_runs_saved_before_the_field_resume_and_another_dtype_is_refused():
    for config in (tiny_config(), omniglot_configs.get_config("tiny")):
        saved = json.loads(config.to_json())
        del saved["model"]["compute_dtype"]
        # Today's config, and one as old as the run, continue it.
        resume_checks.check_resume_compatible(saved, config)
        resume_checks.check_resume_compatible(saved, ml_collections.ConfigDict(saved))
        config.model.compute_dtype = "bfloat16"
        with pytest.raises(UserInputError, match=r"different config \(model; "):
            resume_checks.check_resume_compatible(saved, config)
