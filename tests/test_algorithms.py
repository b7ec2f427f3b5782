"""Each algorithm's outer gradient against finite differences, closed forms or exact solves."""

import dataclasses
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from maml_dist import algorithms, models
from maml_dist.algorithms import anil, imaml, maml
from maml_dist.types import TaskBatch

INNER = algorithms.InnerConfig(lr=0.1, steps=3)


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


def _task(tasks, i):
    return jax.tree.map(lambda a: a[i], tasks)


def _meta_grad(algorithm, meta_params, tasks, weights):
    """Weighted sum over tasks of `task_grad`, and of the query losses after adaptation."""
    grads, (losses, _) = jax.vmap(lambda t: algorithm.task_grad(meta_params, t, 0))(tasks)
    weigh = lambda g: jnp.tensordot(weights, g, axes=1)  # noqa: E731
    return jax.tree.map(weigh, grads), weigh(losses)


def _central_differences(f, tree, eps):
    flat, unravel = ravel_pytree(tree)
    grad = np.zeros(flat.shape, np.float64)
    for i in range(flat.size):
        e = jnp.zeros_like(flat).at[i].set(eps)
        grad[i] = (f(unravel(flat + e)) - f(unravel(flat - e))) / (2 * eps)
    return grad


def _objective(loss_fn, tasks, weights, inner):
    """MAML's objective written directly: one vmap over tasks, no algorithm interface."""

    def objective(params):
        def after(t):
            adapted = maml.inner_loop(loss_fn, params, t.support_x, t.support_y, inner)
            return loss_fn(adapted, t.query_x, t.query_y)

        return jnp.sum(weights * jax.vmap(after)(tasks))

    return objective


@pytest.mark.parametrize("remat,unroll", list(itertools.product([False, True], [0, 3])))
def test_maml_second_order_matches_finite_differences(remat, unroll):
    with jax.enable_x64(True):
        loss_fn, params, tasks, weights = _tiny_problem(jnp.float64)
        # unroll=3: the three inner steps as straight code (a scan still with remat); 0: one
        # lax.scan.
        inner = dataclasses.replace(INNER, remat=remat, unroll=unroll)
        f = jax.jit(_objective(loss_fn, tasks, weights, inner))
        numeric = _central_differences(f, params, eps=1e-6)
        # The algorithm's task_grad, summed over tasks, against FD of the directly written
        # objective. float64 central differences are accurate to ~1e-9 here.
        grad, _ = _meta_grad(
            algorithms.make_algorithm("maml", loss_fn, inner), {"params": params}, tasks, weights
        )
        np.testing.assert_allclose(ravel_pytree(grad)[0], numeric, rtol=1e-6, atol=1e-8)

        fomaml = algorithms.make_algorithm("fomaml", loss_fn, inner)
        fo_grad = ravel_pytree(_meta_grad(fomaml, {"params": params}, tasks, weights)[0])[0]
        # A silently first-order "second-order" path would fail here: the Hessian terms
        # change the gradient by far more than the FD error.
        assert np.linalg.norm(fo_grad - numeric) > 1e-3 * np.linalg.norm(numeric)


def test_fomaml_matches_closed_form():
    with jax.enable_x64(True):
        loss_fn, params, tasks, weights = _tiny_problem(jnp.float64)
        fomaml = algorithms.make_algorithm("fomaml", loss_fn, dataclasses.replace(INNER, steps=2))
        grad, _ = _meta_grad(fomaml, {"params": params}, tasks, weights)

        # FOMAML: sum_i w_i * grad L_query_i evaluated at the adapted parameters.
        def closed_form_one(task, w):
            p = params
            for _ in range(2):
                g = jax.grad(loss_fn)(p, task.support_x, task.support_y)
                p = jax.tree.map(lambda a, b: a - 0.1 * b, p, g)
            return jax.tree.map(lambda g: w * g, jax.grad(loss_fn)(p, task.query_x, task.query_y))

        parts = [closed_form_one(_task(tasks, i), weights[i]) for i in range(3)]
        expected = jax.tree.map(lambda *gs: sum(gs), *parts)
        chex.assert_trees_all_close(grad["params"], expected, rtol=1e-10, atol=1e-12)


def test_remat_gives_same_meta_gradient_in_float32():
    loss_fn, params, tasks, weights = _tiny_problem(jnp.float32)
    inner = dataclasses.replace(INNER, steps=5)
    plain = jax.grad(_objective(loss_fn, tasks, weights, inner))(params)
    remat = jax.grad(_objective(loss_fn, tasks, weights, dataclasses.replace(inner, remat=True)))(
        params
    )
    chex.assert_trees_all_close(plain, remat, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["maml", "fomaml", "metasgd", "anil", "boil"])
def test_unrolled_inner_loop_is_straight_code_with_the_same_meta_gradient(name):
    loss_fn, params, tasks, weights = _tiny_problem(jnp.float32)
    results = {}
    for unroll in (0, 3):
        algorithm = algorithms.make_algorithm(
            name, loss_fn, dataclasses.replace(INNER, unroll=unroll)
        )
        meta_params = algorithm.init(params)
        fn = jax.jit(lambda m, t, a=algorithm: _meta_grad(a, m, t, weights))
        hlo = fn.lower(meta_params, tasks).as_text()
        # The loop is gone from the program only when unrolled (the test's own vmap
        # lowers to no loop either).
        assert ("stablehlo.while" in hlo) == (unroll == 0)
        results[unroll] = fn(meta_params, tasks)
    chex.assert_trees_all_close(results[0], results[3], rtol=1e-5, atol=1e-6)


def test_rematerialised_inner_loops_scan_even_when_short():
    loss_fn, params, tasks, weights = _tiny_problem(jnp.float32)
    inner = dataclasses.replace(INNER, unroll=3, remat=True)
    algorithm = algorithms.make_algorithm("maml", loss_fn, inner)
    meta_params = algorithm.init(params)
    hlo = jax.jit(lambda m, t: _meta_grad(algorithm, m, t, weights)).lower(meta_params, tasks)
    assert "stablehlo.while" in hlo.as_text()


def test_metasgd_learning_rate_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        loss_fn, params, tasks, weights = _tiny_problem(jnp.float64)
        metasgd = algorithms.make_algorithm("metasgd", loss_fn, INNER)
        meta = metasgd.init(params)
        # Rates that differ per element, so a gradient that ignored their layout would fail.
        meta["inner_lr"] = jax.tree.map(
            lambda a: a * jnp.linspace(0.5, 1.5, a.size).reshape(a.shape), meta["inner_lr"]
        )
        grad, _ = _meta_grad(metasgd, meta, tasks, weights)
        f = jax.jit(lambda m: _meta_grad(metasgd, m, tasks, weights)[1])
        numeric = _central_differences(f, meta, eps=1e-6)
        np.testing.assert_allclose(ravel_pytree(grad)[0], numeric, rtol=1e-6, atol=1e-8)
        assert np.linalg.norm(ravel_pytree(grad["inner_lr"])[0]) > 1e-3


def test_metasgd_with_uniform_rates_adapts_like_maml():
    loss_fn, params, tasks, _ = _tiny_problem(jnp.float32)
    task = _task(tasks, 0)
    metasgd = algorithms.make_algorithm("metasgd", loss_fn, INNER)
    mamls = algorithms.make_algorithm("maml", loss_fn, INNER)
    a = metasgd.adapt(metasgd.init(params), task.support_x, task.support_y, 3)
    b = mamls.adapt(mamls.init(params), task.support_x, task.support_y, 3)
    chex.assert_trees_all_close(a, b, rtol=1e-6)


def test_anil_adapts_only_the_head_and_matches_the_reference_gradient():
    with jax.enable_x64(True):
        loss_fn, params, tasks, weights = _tiny_problem(jnp.float64)
        algorithm = algorithms.make_algorithm("anil", loss_fn, INNER)
        task = _task(tasks, 0)
        adapted = algorithm.adapt({"params": params}, task.support_x, task.support_y, 3)
        assert set(params) == {"Dense_0", models.HEAD}
        chex.assert_trees_all_equal(adapted["Dense_0"], params["Dense_0"])  # no inner update
        assert not np.allclose(adapted[models.HEAD]["kernel"], params[models.HEAD]["kernel"])

        # Reference: the head adapted by hand, the body held; the outer gradient of that.
        def reference(p):
            total = 0.0
            for i in range(3):
                t = _task(tasks, i)
                head = p[models.HEAD]
                for _ in range(3):
                    g = jax.grad(
                        lambda h, t=t: loss_fn({**p, models.HEAD: h}, t.support_x, t.support_y)
                    )(head)
                    head = jax.tree.map(lambda a, b: a - 0.1 * b, head, g)
                total += weights[i] * loss_fn({**p, models.HEAD: head}, t.query_x, t.query_y)
            return total

        grad, _ = _meta_grad(algorithm, {"params": params}, tasks, weights)
        chex.assert_trees_all_close(
            grad["params"], jax.grad(reference)(params), rtol=1e-10, atol=1e-12
        )
        # The body's gradient includes the path through the head's inner steps.
        assert np.linalg.norm(grad["params"]["Dense_0"]["kernel"]) > 0


def test_boil_adapts_all_but_the_head_and_matches_finite_differences():
    with jax.enable_x64(True):
        loss_fn, params, tasks, weights = _tiny_problem(jnp.float64)
        algorithm = algorithms.make_algorithm("boil", loss_fn, INNER)
        task = _task(tasks, 0)
        adapted = algorithm.adapt({"params": params}, task.support_x, task.support_y, 3)
        assert set(params) == {"Dense_0", models.HEAD}
        chex.assert_trees_all_equal(adapted[models.HEAD], params[models.HEAD])  # kept
        assert not np.allclose(adapted["Dense_0"]["kernel"], params["Dense_0"]["kernel"])
        # One inner step is SGD on the body, written out: every non-head leaf moves by
        # -lr times its gradient at the full parameters.
        stepped = algorithm.inner_step(
            {"params": params}, params, task.support_x, task.support_y, 0
        )
        g = jax.grad(loss_fn)(params, task.support_x, task.support_y)
        chex.assert_trees_all_close(
            stepped["Dense_0"],
            jax.tree.map(lambda p, d: p - 0.1 * d, params["Dense_0"], g["Dense_0"]),
            rtol=1e-12,
        )

        # The meta-gradient against float64 central differences of the objective written
        # directly: the body adapted by hand, the head held, the query loss after 3 steps.
        def objective(p):
            total = 0.0
            for i in range(3):
                t = _task(tasks, i)
                body = {k: v for k, v in p.items() if k != models.HEAD}
                for _ in range(3):
                    d = jax.grad(
                        lambda b, t=t: loss_fn(
                            {**b, models.HEAD: p[models.HEAD]}, t.support_x, t.support_y
                        )
                    )(body)
                    body = jax.tree.map(lambda a, b: a - 0.1 * b, body, d)
                total += weights[i] * loss_fn(
                    {**body, models.HEAD: p[models.HEAD]}, t.query_x, t.query_y
                )
            return total

        numeric = _central_differences(jax.jit(objective), params, eps=1e-6)
        grad, _ = _meta_grad(algorithm, {"params": params}, tasks, weights)
        np.testing.assert_allclose(ravel_pytree(grad)[0], numeric, rtol=1e-6, atol=1e-8)
        # First order: the query loss's gradient at the adapted parameters (the body's
        # steps a constant shift), the FOMAML closed form on BOIL's adaptation.
        first = algorithms.make_algorithm(
            "boil", loss_fn, dataclasses.replace(INNER, first_order=True)
        )
        fo_grad, _ = _meta_grad(first, {"params": params}, tasks, weights)
        parts = []
        for i in range(3):
            t = _task(tasks, i)
            adapted = first.adapt({"params": params}, t.support_x, t.support_y, 3)
            g = jax.grad(loss_fn)(adapted, t.query_x, t.query_y)
            parts.append(jax.tree.map(lambda a, w=weights[i]: w * a, g))
        closed = jax.tree.map(lambda *gs: sum(gs), *parts)
        chex.assert_trees_all_close(fo_grad["params"], closed, rtol=1e-10, atol=1e-12)
        # Second order meta-learns the head through the body's inner steps too (they
        # depend on it): its gradient differs from that direct term, by far more than FD's
        # error, and so does the whole gradient.
        head, direct = grad["params"][models.HEAD], closed[models.HEAD]
        gap = ravel_pytree(head)[0] - ravel_pytree(direct)[0]
        assert np.linalg.norm(gap) > 1e-3 * np.linalg.norm(ravel_pytree(direct)[0])
        flat_fo = ravel_pytree(fo_grad)[0]
        assert np.linalg.norm(flat_fo - numeric) > 1e-3 * np.linalg.norm(numeric)


def test_boil_names_a_missing_head():
    loss_fn = lambda p, x, y: jnp.sum(p["Dense_0"] * x)  # noqa: E731
    algorithm = algorithms.make_algorithm("boil", loss_fn, INNER)
    with pytest.raises(algorithms.UserInputError, match="BOIL splits the network at its head"):
        algorithm.adapt({"params": {"Dense_0": jnp.ones(1)}}, jnp.ones(1), jnp.ones(1), 1)


@pytest.mark.parametrize("first_order", [False, True])
def test_anil_with_the_body_head_split_equals_anil_on_the_whole_network(first_order):
    """The split (body once per set) is a speed-up only: same gradients, same adaptation."""
    with jax.enable_x64(True):
        loss_fn, params, tasks, weights = _tiny_problem(jnp.float64)
        model = models.MLP(hidden_sizes=(4,), out_features=1)
        mse = lambda p, y: jnp.mean(jnp.square(p - y))  # noqa: E731
        split = algorithms.make_head_split(model, mse, {})
        inner = dataclasses.replace(INNER, first_order=first_order)
        whole = algorithms.make_algorithm("anil", loss_fn, inner)
        fast = algorithms.make_algorithm("anil", loss_fn, inner, head_split=split)
        meta = {"params": params}
        want, want_loss = _meta_grad(whole, meta, tasks, weights)
        got, got_loss = _meta_grad(fast, meta, tasks, weights)
        chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(got_loss, want_loss, rtol=1e-12)
        task = _task(tasks, 2)
        chex.assert_trees_all_close(
            fast.adapt(meta, task.support_x, task.support_y, 5),
            whole.adapt(meta, task.support_x, task.support_y, 5),
            rtol=1e-12,
        )
        chex.assert_trees_all_close(
            fast.inner_step(meta, params, task.support_x, task.support_y, 0),
            whole.inner_step(meta, params, task.support_x, task.support_y, 0),
            rtol=1e-12,
        )


@pytest.mark.parametrize("conv_impl", ["xla", "im2col", "slices"])
def test_convnet_body_then_head_is_the_whole_network(conv_impl):
    model = models.ConvNet(num_classes=5, filters=8, blocks=2, conv_impl=conv_impl)
    x = jax.random.uniform(jax.random.key(0), (6, 28, 28, 1))
    params = model.init(jax.random.key(1), x)["params"]
    body = {k: v for k, v in params.items() if k != models.HEAD}
    feats = model.apply({"params": body}, x, part="body")
    head = model.apply({"params": {models.HEAD: params[models.HEAD]}}, feats, part="head")
    np.testing.assert_allclose(head, model.apply({"params": params}, x), rtol=1e-6)
    with pytest.raises(ValueError, match="part must be one of"):
        model.apply({"params": params}, x, part="neck")


def test_anil_names_a_missing_head():
    with pytest.raises(algorithms.UserInputError, match="no 'head' entry"):
        anil.split({"Dense_0": 1}, "head")


@pytest.mark.parametrize("steps", [1, 4])
def test_reptile_equals_its_closed_form(steps):
    with jax.enable_x64(True):
        loss_fn, params, tasks, _ = _tiny_problem(jnp.float64)
        algorithm = algorithms.make_algorithm(
            "reptile", loss_fn, dataclasses.replace(INNER, steps=steps)
        )
        task = _task(tasks, 1)
        grad, _ = algorithm.task_grad({"params": params}, task, 0)
        phi = params
        for _ in range(steps):
            g = jax.grad(loss_fn)(phi, task.support_x, task.support_y)
            phi = jax.tree.map(lambda a, b: a - 0.1 * b, phi, g)
        expected = jax.tree.map(lambda t, p: t - p, params, phi)
        if steps == 1:  # theta - phi is then the scaled support gradient itself
            expected = jax.tree.map(
                lambda g: 0.1 * g, jax.grad(loss_fn)(params, task.support_x, task.support_y)
            )
        chex.assert_trees_all_close(grad["params"], expected, rtol=1e-10, atol=1e-12)


def test_imaml_cg_meta_gradient_equals_exact_solve_with_dense_hessian():
    with jax.enable_x64(True):
        loss_fn, params, tasks, _ = _tiny_problem(jnp.float64)
        n = ravel_pytree(params)[0].size
        inner = dataclasses.replace(INNER, lr=0.02, steps=20, imaml_lambda=5.0, cg_steps=2 * n)
        algorithm = algorithms.make_algorithm("imaml", loss_fn, inner)
        task = _task(tasks, 2)
        grad, _ = algorithm.task_grad({"params": params}, task, 0)

        phi = algorithm.adapt({"params": params}, task.support_x, task.support_y, 20)
        flat_phi, unravel = ravel_pytree(phi)
        hessian = jax.hessian(lambda f: loss_fn(unravel(f), task.support_x, task.support_y))(
            flat_phi
        )
        assert np.min(np.linalg.eigvalsh(np.eye(n) + hessian / 5.0)) > 0  # CG's premise
        query_grad = ravel_pytree(jax.grad(loss_fn)(phi, task.query_x, task.query_y))[0]
        exact = np.linalg.solve(np.eye(n) + hessian / 5.0, query_grad)
        np.testing.assert_allclose(ravel_pytree(grad)[0], exact, rtol=1e-4, atol=1e-8)
        # ...and it is not simply the query gradient (the first-order approximation).
        assert np.linalg.norm(exact - query_grad) > 1e-3 * np.linalg.norm(exact)


def test_imaml_inner_steps_follow_the_proximal_objective():
    loss_fn, params, tasks, _ = _tiny_problem(jnp.float32)
    task = _task(tasks, 0)
    algorithm = algorithms.make_algorithm(
        "imaml", loss_fn, dataclasses.replace(INNER, line_search=0)
    )
    theta = params
    phi = jax.tree.map(lambda p: p + 0.1, params)
    stepped = algorithm.inner_step({"params": theta}, phi, task.support_x, task.support_y, 0)
    g = jax.grad(loss_fn)(phi, task.support_x, task.support_y)
    expected = jax.tree.map(lambda p, g, t: p - 0.1 * (g + 2.0 * (p - t)), phi, g, theta)
    chex.assert_trees_all_close(stepped, expected, rtol=1e-6)


def test_imaml_line_search_never_increases_the_proximal_objective():
    loss_fn, params, tasks, _ = _tiny_problem(jnp.float32)
    task = _task(tasks, 2)  # amplitude 4: a fixed step of 0.5 diverges here
    theta = {"params": params}

    def proximal(p):
        distance = sum(
            jnp.sum(jnp.square(a - b))
            for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(params), strict=True)
        )
        return loss_fn(p, task.support_x, task.support_y) + 0.5 * 2.0 * distance

    for search, expect_monotone in ((0, False), (12, True)):
        inner = dataclasses.replace(INNER, lr=0.5, line_search=search)
        algorithm = algorithms.make_algorithm("imaml", loss_fn, inner)
        p, values = params, [float(proximal(params))]
        for j in range(5):
            p = algorithm.inner_step(theta, p, task.support_x, task.support_y, j)
            values.append(float(proximal(p)))
        monotone = all(b <= a for a, b in itertools.pairwise(values))
        assert monotone == expect_monotone, (search, values)


def test_conjugate_gradient_solves_a_small_system():
    a = jnp.array([[4.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 2.0]])
    b = jnp.array([1.0, 2.0, 3.0])
    x = imaml.conjugate_gradient(lambda v: a @ v, b, 3)
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-5)
    # Extra iterations after convergence stay finite (no 0/0).
    assert np.all(np.isfinite(imaml.conjugate_gradient(lambda v: a @ v, b, 10)))
    # Indefinite systems: CG stops at a direction of negative curvature instead of stepping
    # without bound. When the first direction b already has b.Ab < 0, b comes back.
    indefinite = jnp.diag(jnp.array([-1.0, 1.0, 1.0]))
    b = jnp.array([2.0, 1.0, 0.0])
    np.testing.assert_array_equal(imaml.conjugate_gradient(lambda v: indefinite @ v, b, 5), b)
    # b.Ab > 0 at first, then a direction of negative curvature: the first iterate stays.
    b = jnp.array([1.0, 2.0, 0.0])
    x = imaml.conjugate_gradient(lambda v: indefinite @ v, b, 5)
    first = (b @ b) / (b @ indefinite @ b) * b
    np.testing.assert_allclose(x, first, rtol=1e-6)
    # A non-finite right-hand side (a diverged task) is not hidden as a zero gradient.
    assert np.isnan(imaml.conjugate_gradient(lambda v: a @ v, b.at[0].set(jnp.nan), 3)[0])


@pytest.mark.parametrize("name", list(algorithms.REGISTRY))
def test_adaptation_curve_agrees_with_adapt(name):
    loss_fn, params, tasks, _ = _tiny_problem(jnp.float32)
    algorithm = algorithms.make_algorithm(name, loss_fn, dataclasses.replace(INNER, lr=0.02))
    meta = algorithm.init(params)
    task = _task(tasks, 0)
    curve = algorithms.adaptation_curve(algorithm, meta, task, 4, (loss_fn,))
    assert curve.shape == (5, 1)
    for k in (0, 2, 4):
        adapted = algorithm.adapt(meta, task.support_x, task.support_y, k)
        np.testing.assert_allclose(
            curve[k, 0], loss_fn(adapted, task.query_x, task.query_y), rtol=1e-5
        )
    # Adapting on a task's own support set lowers its support loss.
    adapted = algorithm.adapt(meta, task.support_x, task.support_y, 4)
    assert loss_fn(adapted, task.support_x, task.support_y) < loss_fn(
        params, task.support_x, task.support_y
    )


def test_unknown_algorithm_is_named():
    with pytest.raises(algorithms.UserInputError, match="unknown algorithm 'mamlx'"):
        algorithms.make_algorithm("mamlx", lambda p, x, y: 0.0, INNER)


def test_median_counts_diverged_tasks_as_infinite():
    from maml_dist import meta_test

    values = np.array([[1.0, np.nan], [2.0, 3.0], [3.0, np.inf], [np.nan, 4.0], [5.0, 5.0]])
    np.testing.assert_array_equal(meta_test.median(values), [3.0, 5.0])
    assert np.isinf(meta_test.median(np.array([[np.nan], [np.nan], [1.0]])))[0]
