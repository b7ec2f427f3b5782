"""Second-order meta-gradients against finite differences; FOMAML against its closed form."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from maml_dist import algorithms, models
from maml_dist.types import TaskBatch


def _tiny_problem(dtype):
    model = models.MLP(hidden_sizes=(4,), out_features=1)
    params = model.init(jax.random.key(0), jnp.zeros((1, 1), dtype))["params"]
    params = jax.tree.map(lambda p: p.astype(dtype), params)

    def loss_fn(p, x, y):
        return jnp.mean(jnp.square(model.apply({"params": p}, x) - y))

    k1, k2 = jax.random.split(jax.random.key(1))
    xs = jax.random.uniform(k1, (3, 10, 1), dtype, -3.0, 3.0)
    amps = jnp.asarray([1.0, 2.5, 4.0], dtype)[:, None, None]
    ys = amps * jnp.sin(xs + jax.random.uniform(k2, (3, 1, 1), dtype))
    tasks = TaskBatch(
        support_x=xs[:, :5], support_y=ys[:, :5], query_x=xs[:, 5:], query_y=ys[:, 5:]
    )
    weights = jnp.full((3,), 1 / 3, dtype)
    return loss_fn, params, tasks, weights


def _objective(loss_fn, tasks, weights, inner):
    return lambda p: algorithms.meta_objective(loss_fn, p, tasks, weights, inner)[0]


def _central_differences(f, params, eps):
    flat, unravel = ravel_pytree(params)
    grad = np.zeros(flat.shape, np.float64)
    for i in range(flat.size):
        e = jnp.zeros_like(flat).at[i].set(eps)
        grad[i] = (f(unravel(flat + e)) - f(unravel(flat - e))) / (2 * eps)
    return grad


@pytest.mark.parametrize("remat", [False, True])
def test_second_order_matches_finite_differences(remat):
    with jax.enable_x64(True):
        loss_fn, params, tasks, weights = _tiny_problem(jnp.float64)
        inner = algorithms.InnerConfig(lr=0.1, steps=3, remat=remat)
        f = jax.jit(_objective(loss_fn, tasks, weights, inner))
        grad = ravel_pytree(jax.grad(f)(params))[0]
        numeric = _central_differences(f, params, eps=1e-6)
        # float64 central differences are accurate to ~1e-9 here; 1e-6 leaves margin.
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)

        fo = algorithms.InnerConfig(lr=0.1, steps=3, first_order=True)
        fo_grad = ravel_pytree(jax.grad(_objective(loss_fn, tasks, weights, fo))(params))[0]
        # A silently first-order "second-order" path would fail here: the Hessian terms
        # change the gradient by far more than the FD error.
        assert np.linalg.norm(fo_grad - numeric) > 1e-3 * np.linalg.norm(numeric)


def test_first_order_matches_closed_form():
    with jax.enable_x64(True):
        loss_fn, params, tasks, weights = _tiny_problem(jnp.float64)
        inner = algorithms.InnerConfig(lr=0.1, steps=2, first_order=True)
        grad = jax.grad(_objective(loss_fn, tasks, weights, inner))(params)

        # FOMAML: sum_i w_i * grad L_query_i evaluated at the adapted parameters.
        def closed_form_one(task, w):
            p = params
            for _ in range(2):
                g = jax.grad(loss_fn)(p, task.support_x, task.support_y)
                p = jax.tree.map(lambda a, b: a - 0.1 * b, p, g)
            return jax.tree.map(lambda g: w * g, jax.grad(loss_fn)(p, task.query_x, task.query_y))

        parts = [
            closed_form_one(jax.tree.map(lambda a, i=i: a[i], tasks), weights[i]) for i in range(3)
        ]
        expected = jax.tree.map(lambda *gs: sum(gs), *parts)
        chex.assert_trees_all_close(grad, expected, rtol=1e-10, atol=1e-12)


def test_remat_gives_same_meta_gradient_in_float32():
    loss_fn, params, tasks, weights = _tiny_problem(jnp.float32)
    plain = jax.grad(_objective(loss_fn, tasks, weights, algorithms.InnerConfig(0.1, 5)))(params)
    remat = jax.grad(
        _objective(loss_fn, tasks, weights, algorithms.InnerConfig(0.1, 5, remat=True))
    )(params)
    chex.assert_trees_all_close(plain, remat, rtol=1e-5, atol=1e-6)


def test_adaptation_curve_agrees_with_adapt():
    loss_fn, params, tasks, _ = _tiny_problem(jnp.float32)
    task = jax.tree.map(lambda a: a[0], tasks)
    curve = algorithms.adaptation_curve(loss_fn, params, task, 0.02, 4)
    assert curve.shape == (5, 1)
    curve = curve[:, 0]
    for k in (0, 2, 4):
        adapted = algorithms.adapt(
            loss_fn, params, task.support_x, task.support_y, algorithms.InnerConfig(0.02, k)
        )
        np.testing.assert_allclose(
            curve[k], loss_fn(adapted, task.query_x, task.query_y), rtol=1e-5
        )
    # Adapting on a task's own support set lowers its support loss.
    adapted = algorithms.adapt(
        loss_fn, params, task.support_x, task.support_y, algorithms.InnerConfig(0.02, 4)
    )
    assert loss_fn(adapted, task.support_x, task.support_y) < loss_fn(
        params, task.support_x, task.support_y
    )
