"""Sharded meta-loss and meta-gradient equal the unsharded vmap reference."""

import chex
import jax
import jax.numpy as jnp
import pytest
from helpers import pieces, tiny_config

from maml_dist import parallel

# float32 sums of 16-25 task terms in a different order (per device, then across devices)
# differ from one flat sum by a few ulps: rtol 1e-5 is ~100 ulps, far below any real bug
# (a wrong task assignment or a device-summed inner gradient changes results by O(1)).
RTOL, ATOL = 1e-5, 1e-6


def _setup(meta_batch_size, **overrides):
    config = tiny_config(meta_batch_size=meta_batch_size, **overrides)
    family, model, loss_fn, sample_fn = pieces(config)
    params = model.init(jax.random.key(0), family.example_input())["params"]
    inner = parallel.inner_config(config)
    reference = jax.jit(
        lambda p, s: parallel.reference_meta_grads(
            loss_fn, sample_fn, inner, meta_batch_size, config.seed, p, s
        )
    )(params, jnp.int32(7))
    return config, loss_fn, sample_fn, params, inner, reference


def _sharded(config, loss_fn, sample_fn, params, inner, num_devices):
    mesh = parallel.make_mesh(jax.devices()[:num_devices])
    fn = jax.jit(
        parallel.make_meta_grad_fn(
            loss_fn, sample_fn, inner, config.meta_batch_size, config.seed, mesh
        )
    )
    params = jax.device_put(params, parallel.replicated(mesh))
    return fn(params, jax.device_put(jnp.int32(7), parallel.replicated(mesh)))


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("num_devices", [1, 2, 4, 8])
def test_sharded_equals_reference(num_devices, first_order):
    config, loss_fn, sample_fn, params, inner, reference = _setup(
        16, inner_steps=2, first_order=first_order
    )
    result = _sharded(config, loss_fn, sample_fn, params, inner, num_devices)
    chex.assert_trees_all_close(result, reference, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("num_devices", [2, 4, 8])
def test_padded_meta_batch_equals_reference(num_devices):
    # 25 tasks (the paper's meta-batch) on 2/4/8 devices: padded to 26/28/32 with masked tasks.
    config, loss_fn, sample_fn, params, inner, reference = _setup(25, pad_meta_batch=True)
    result = _sharded(config, loss_fn, sample_fn, params, inner, num_devices)
    chex.assert_trees_all_close(result, reference, rtol=RTOL, atol=ATOL)


def test_without_pcast_the_inner_gradient_is_wrong():
    """Guards the DESIGN.md §4 trap: the test above would catch its return."""
    config, loss_fn, sample_fn, params, inner, reference = _setup(16)
    mesh = parallel.make_mesh(jax.devices()[:4])

    def body(p, step):  # make_meta_grad_fn's body without the pcast
        first = jax.lax.axis_index(parallel.AXIS) * 4
        grads, metrics = parallel.local_meta_grads(
            loss_fn, sample_fn, inner, 16, config.seed, p, step, first + jnp.arange(4)
        )
        return parallel.fused_psum((grads, metrics), parallel.AXIS)

    from jax.sharding import PartitionSpec as P

    fn = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P()), out_specs=(P(), P())))
    _, metrics = fn(jax.device_put(params, parallel.replicated(mesh)), jnp.int32(7))
    assert abs(float(metrics["meta_loss"]) - float(reference[1]["meta_loss"])) > 1e-3


def test_layout():
    assert parallel.TaskLayout(25, 8).per_device == 4
    assert parallel.TaskLayout(25, 8).padded_size == 32
    assert parallel.TaskLayout(24, 8).padded_size == 24
    weights = parallel.task_weights(jnp.arange(32), 25)
    assert float(weights.sum()) == pytest.approx(1.0)
    assert float(weights[25:].sum()) == 0.0
