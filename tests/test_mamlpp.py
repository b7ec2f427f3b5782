"""MAML++: its loss weights, learned rates, derivative-order annealing and per-step batch
norm against independent formulations; sharded, resumed and run from the command line."""

import dataclasses
import functools
import json
import shutil

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from helpers import make_omniglot_set, run_module, tiny_config
from jax.flatten_util import ravel_pytree
from test_algorithms import _central_differences, _task, _tiny_problem

from configs import omniglot as omniglot_configs
from maml_dist import (
    algorithms,
    checks,
    meta_objective,
    models,
    norms,
    parallel,
    resume_checks,
    trainer,
)
from maml_dist import state as state_lib
from maml_dist.algorithms import maml, mamlpp
from maml_dist.errors import UserInputError
from maml_dist.metrics import read_jsonl
from maml_dist.types import TaskBatch

ALL_OFF = {"msl": False, "lslr": False, "doa_steps": 0}


def _paper_weights(epoch, n, num_epochs):
    """`get_per_step_loss_importance_vector` of the MAML++ code, transcribed."""
    w = np.ones(n) / n
    decay = 1.0 / n / num_epochs
    floor = 0.03 / n
    for i in range(n - 1):
        w[i] = max(w[i] - epoch * decay, floor)
    w[-1] = min(w[-1] + epoch * (n - 1) * decay, 1.0 - (n - 1) * floor)
    return w


@pytest.mark.parametrize("n", [2, 5])
def test_msl_weights_sum_to_one_and_follow_the_papers_schedule(n):
    anneal = 100
    weights = jax.jit(lambda s: mamlpp.msl_weights(s, n, anneal))
    last_only = np.eye(n)[-1]
    np.testing.assert_allclose(weights(0), np.full(n, 1 / n), rtol=1e-6)
    for step in range(0, 140, 7):
        w = np.asarray(weights(jnp.int32(step)))
        assert abs(w.sum() - 1) < 1e-6, (step, w)
        expected = _paper_weights(step, n, anneal) if step < anneal else last_only
        np.testing.assert_allclose(w, expected, atol=1e-6, err_msg=f"step {step}")
    # Early weights only fall and the last only rises.
    ws = np.stack([np.asarray(weights(s)) for s in range(0, anneal, 5)])
    assert np.all(np.diff(ws[:, 0]) <= 0) and np.all(np.diff(ws[:, -1]) >= 0)
    np.testing.assert_array_equal(mamlpp.msl_weights(3, n, 0), last_only)


@pytest.mark.parametrize("msl", [False, True])
def test_learned_per_step_rates_get_finite_difference_gradients(msl):
    with jax.enable_x64(True):
        loss_fn, params, tasks, _ = _tiny_problem(jnp.float64)
        inner = algorithms.InnerConfig(
            lr=0.1, steps=3, msl=msl, msl_anneal_steps=100, lslr=True, doa_steps=0
        )
        algorithm = mamlpp.make(loss_fn, inner)
        meta = algorithm.init(params)
        # Different rates per step and per tensor, so a wrong index would show.
        scales = jnp.asarray([1.0, 0.7, 1.3])
        leaves, treedef = jax.tree.flatten(meta["inner_lr"])
        meta["inner_lr"] = treedef.unflatten(
            [r * scales * (1 + 0.1 * k) for k, r in enumerate(leaves)]
        )
        task, step = _task(tasks, 1), 40
        weights = mamlpp.msl_weights(step, 3, 100)

        # The objective written out: step j uses each tensor's j-th rate.
        @jax.jit
        def objective(m):
            p, losses = m["params"], []
            for j in range(3):
                g = jax.grad(loss_fn)(p, task.support_x, task.support_y)
                p = jax.tree.map(lambda a, r, b, j=j: a - r[j] * b, p, m["inner_lr"], g)
                losses.append(loss_fn(p, task.query_x, task.query_y))
            losses = jnp.stack(losses)
            return jnp.dot(weights, losses) if msl else losses[-1]

        grads, (loss, _) = jax.jit(algorithm.task_grad)(meta, task, step)
        expected = _central_differences(objective, meta, 1e-6)
        np.testing.assert_allclose(ravel_pytree(grads)[0], expected, rtol=1e-6, atol=1e-9)
        assert np.ptp(ravel_pytree(grads["inner_lr"])[0]) > 0
        # The reported loss is the query loss after the last step, whatever the weights.
        last = loss_fn(
            algorithm.adapt(meta, task.support_x, task.support_y, 3), task.query_x, task.query_y
        )
        np.testing.assert_allclose(loss, last, rtol=1e-12)


def test_msl_once_annealed_skips_the_other_query_passes_and_equals_the_last_step_alone():
    with jax.enable_x64(True):
        loss_fn, params, tasks, _ = _tiny_problem(jnp.float64)
        inner = algorithms.InnerConfig(lr=0.1, steps=3, msl_anneal_steps=10, doa_steps=0)
        with_msl = mamlpp.make(loss_fn, inner)
        without = mamlpp.make(loss_fn, dataclasses.replace(inner, msl=False))
        meta, task = with_msl.init(params), _task(tasks, 2)
        msl_grad, plain_grad = jax.jit(with_msl.task_grad), jax.jit(without.task_grad)
        for step in (10, 11, 500):  # annealed: the last step's loss alone
            chex.assert_trees_all_close(msl_grad(meta, task, step), plain_grad(meta, task, 0))
        # Before it, the weighted sum: another gradient, the same reported loss.
        early, (loss, _) = msl_grad(meta, task, 9)
        late, (plain_loss, _) = plain_grad(meta, task, 9)
        np.testing.assert_allclose(loss, plain_loss, rtol=1e-12)
        gap = ravel_pytree(early)[0] - ravel_pytree(late)[0]
        assert np.linalg.norm(gap) > 1e-4 * np.linalg.norm(ravel_pytree(late)[0])


def test_doa_is_first_order_before_its_step_and_second_order_from_it():
    with jax.enable_x64(True):
        loss_fn, params, tasks, _ = _tiny_problem(jnp.float64)
        inner = algorithms.InnerConfig(lr=0.1, steps=3, msl=False, lslr=False, doa_steps=5)
        algorithm = mamlpp.make(loss_fn, inner)
        meta, task = algorithm.init(params), _task(tasks, 0)
        task_grad = jax.jit(algorithm.task_grad)  # the step is traced: a real cond
        before = task_grad(meta, task, 4)[0]["params"]
        after = task_grad(meta, task, 5)[0]["params"]
        # First order in closed form: the query gradient at the adapted parameters.
        adapted = algorithm.adapt(meta, task.support_x, task.support_y, 3)
        closed = jax.grad(loss_fn)(adapted, task.query_x, task.query_y)
        chex.assert_trees_all_close(before, closed, rtol=1e-10, atol=1e-14)

        def second_order(p):
            plain = algorithms.InnerConfig(lr=0.1, steps=3)
            out = maml.inner_loop(loss_fn, p, task.support_x, task.support_y, plain)
            return loss_fn(out, task.query_x, task.query_y)

        chex.assert_trees_all_close(after, jax.grad(second_order)(params), rtol=1e-10)
        gap = ravel_pytree(before)[0] - ravel_pytree(after)[0]
        assert np.linalg.norm(gap) > 1e-3 * np.linalg.norm(ravel_pytree(after)[0])


def _accuracy(logits, labels):
    return jnp.mean(jnp.argmax(logits, -1) == labels)


def _cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _conv(bn_mode, steps=2):
    """A small conv net with `bn_mode`, its functions, and MAML++ with `steps` steps."""
    model = models.ConvNet(num_classes=3, filters=4, blocks=2, bn_mode=bn_mode, bn_slots=steps + 1)
    scores = {"accuracy": _accuracy}
    loss_fn = algorithms.make_loss_fn(model, _cross_entropy)
    query_fn = algorithms.make_query_fn(model, _cross_entropy, scores)
    step_net = algorithms.make_step_net(model, _cross_entropy, scores)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    return model, loss_fn, query_fn, step_net, params


def _image_task(key, data=None, ways=3, shots=2, queries=3):
    k1, k2 = jax.random.split(key)
    return TaskBatch(
        support_x=jax.random.uniform(k1, (ways * shots, 8, 8, 1)),
        support_y=jnp.arange(ways * shots) % ways,
        query_x=jax.random.uniform(k2, (ways * queries, 8, 8, 1)),
        query_y=jnp.arange(ways * queries) % ways,
    )


def test_per_step_batch_norm_returns_each_steps_batch_statistics():
    model, loss_fn, query_fn, step_net, params = _conv("per_step_running")
    inner = algorithms.InnerConfig(lr=0.1, steps=2, **ALL_OFF)
    algorithm = mamlpp.make(loss_fn, inner, query_fn, step_net)
    task = _image_task(jax.random.key(1))
    grads = algorithm.task_grad(algorithm.init(params), task, 0)[0]["params"]

    def stats(p, x, j):
        _, sown = model.apply({"params": p}, x, step=j, train=True, mutable=[norms.STEP_STATS])
        return sown[norms.STEP_STATS]

    # The inner steps written out: slot j holds the support set's statistics after j
    # updates, the last slot after all of them.
    expected, p = [], params
    for j in range(2):
        expected.append(stats(p, task.support_x, j))
        g = jax.grad(lambda q, j=j: step_net.support_fn(q, task.support_x, task.support_y, j)[0])(p)
        p = jax.tree.map(lambda a, b: a - 0.1 * b, p, g)
    expected.append(stats(p, task.support_x, 2))
    for layer in ("StepNorm_0", "StepNorm_1"):
        for name, key in (("running_mean", "mean"), ("running_var", "var")):
            want = np.stack([e[layer][key][0] for e in expected])
            np.testing.assert_allclose(grads[layer][name], want, rtol=1e-5, atol=1e-6)
        assert np.all(np.isfinite(grads[layer]["scale"]))


def test_running_statistics_average_in_training_and_classify_each_image_alone():
    model, loss_fn, query_fn, step_net, params = _conv("per_step_running")
    algorithm = mamlpp.make(loss_fn, algorithms.InnerConfig(lr=0.1, steps=2), query_fn, step_net)
    assert algorithm.per_step
    meta = algorithm.init(params)
    task = _image_task(jax.random.key(2))
    grads, _ = algorithm.task_grad(meta, task, 0)
    tx = state_lib.with_running_average(optax.adam(1e-3), momentum=0.25)
    updates, _ = tx.update(grads, tx.init(meta), meta)
    new = optax.apply_updates(meta, updates)
    layer, before = "StepNorm_0", meta["params"]["StepNorm_0"]
    for name in norms.RUNNING_STATS:
        want = 0.75 * before[name] + 0.25 * grads["params"][layer][name]
        np.testing.assert_allclose(new["params"][layer][name], want, rtol=1e-6, atol=1e-7)
    # Adam moved the learned leaves (its first step is ~lr per element), not by the stats.
    step = new["params"][layer]["scale"] - before["scale"]
    assert 0 < np.abs(step).max() <= 1.01e-3

    # Meta-training scores the query as meta-test does: the loss it reports is that of the
    # adapted parameters scored alone.
    plain = mamlpp.make(
        loss_fn, algorithms.InnerConfig(lr=0.1, steps=2, **ALL_OFF), query_fn, step_net
    )
    _, (loss, _) = plain.task_grad(new, task, 0)
    adapted_2 = plain.adapt(new, task.support_x, task.support_y, 2)
    np.testing.assert_allclose(loss, loss_fn(adapted_2, task.query_x, task.query_y, 2), rtol=1e-5)
    # Meta-test: inner steps leave the running statistics exactly as they are ...
    adapted = algorithm.adapt(new, task.support_x, task.support_y, 3)
    for name in norms.RUNNING_STATS:
        np.testing.assert_array_equal(adapted[layer][name], new["params"][layer][name])
    # Evaluation scores the parameters after k steps with slot k.
    curve = algorithms.adaptation_curve(algorithm, new, task, 3, (loss_fn,))
    for k in range(4):
        adapted_k = algorithm.adapt(new, task.support_x, task.support_y, k)
        want = loss_fn(adapted_k, task.query_x, task.query_y, k)
        np.testing.assert_allclose(curve[k, 0], want, rtol=1e-5)
    # ... and normalise with them, so a query image is classified alone as in its batch.
    apply = algorithms.make_apply(model)
    batch = apply(adapted, task.query_x, 3)
    alone = jnp.concatenate([apply(adapted, task.query_x[i : i + 1], 3) for i in range(9)])
    np.testing.assert_allclose(batch, alone, rtol=1e-5, atol=1e-6)

    # Transductive batch norm (the default) is what differs: the check above can fail.
    t_model, *_, t_params = _conv("transductive")
    t_apply = algorithms.make_apply(t_model)
    t_batch = t_apply(t_params, task.query_x)
    t_alone = jnp.concatenate([t_apply(t_params, task.query_x[i : i + 1]) for i in range(9)])
    assert not np.allclose(t_batch, t_alone, atol=1e-3)


def test_support_batch_norm_normalises_each_query_with_its_support_sets_statistics():
    model, loss_fn, query_fn, step_net, params = _conv("per_step_support")
    assert step_net.per_step and not step_net.running
    assert set(params["SupportNorm_0"]) == {"scale", "offset"}  # no running statistics
    task = _image_task(jax.random.key(4))
    apply = algorithms.make_apply(model)
    sx, qx = task.support_x, task.query_x
    # A query image is classified alone as in its batch: it sees the support set only.
    batch = apply(params, qx, 1, sx)
    alone = jnp.concatenate([apply(params, qx[i : i + 1], 1, sx) for i in range(9)])
    np.testing.assert_allclose(batch, alone, rtol=1e-5, atol=1e-6)
    # The statistics are the support set's: support images given as queries come out as
    # the support pass (the set normalised with its own statistics) computes them ...
    np.testing.assert_allclose(apply(params, sx, 1, sx), apply(params, sx, 1), rtol=1e-5)
    # ... so another support set changes every query's output, and the slot matters.
    other = apply(params, qx, 1, jnp.flip(sx, axis=1))
    assert not np.allclose(batch, other, atol=1e-3)
    shifted = jax.tree.map(lambda a: a, params)
    shifted["SupportNorm_0"] = {**params["SupportNorm_0"]}
    shifted["SupportNorm_0"]["offset"] = params["SupportNorm_0"]["offset"].at[2].add(1.0)
    np.testing.assert_array_equal(apply(shifted, qx, 1, sx), batch)
    assert not np.allclose(apply(shifted, qx, 2, sx), apply(params, qx, 2, sx), atol=1e-3)

    # MAML++ meta-trains and meta-tests on these statistics; evaluation passes the task's
    # support set with every query score.
    algorithm = mamlpp.make(loss_fn, algorithms.InnerConfig(lr=0.1, steps=2), query_fn, step_net)
    meta = algorithm.init(params)
    _, (loss, _) = algorithm.task_grad(meta, task, 0)
    adapted = algorithm.adapt(meta, sx, task.support_y, 2)
    np.testing.assert_allclose(loss, loss_fn(adapted, qx, task.query_y, 2, sx), rtol=1e-5)
    curve = algorithms.adaptation_curve(algorithm, meta, task, 3, (loss_fn,))
    for k in range(4):
        adapted_k = algorithm.adapt(meta, sx, task.support_y, k)
        want = loss_fn(adapted_k, qx, task.query_y, k, sx)
        np.testing.assert_allclose(curve[k, 0], want, rtol=1e-5)
    with pytest.raises(UserInputError, match="cannot carry per-step batch-norm state"):
        algorithms.make_algorithm(
            "metasgd", loss_fn, algorithms.InnerConfig(), query_fn, None, step_net
        )


def test_support_batch_norm_meta_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        _, loss_fn, query_fn, step_net, params = _conv("per_step_support")
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        task = jax.tree.map(
            lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a,
            _image_task(jax.random.key(5)),
        )
        inner = algorithms.InnerConfig(lr=0.1, steps=2, msl=False, lslr=True, doa_steps=0)
        algorithm = mamlpp.make(loss_fn, inner, query_fn, step_net)
        meta = algorithm.init(params)

        # The objective written out: support passes normalised with their own statistics,
        # the query with the support set's at the adapted parameters, both differentiated.
        @jax.jit
        def objective(m):
            p = m["params"]
            for j in range(2):
                g = jax.grad(loss_fn)(p, task.support_x, task.support_y, j)
                p = jax.tree.map(lambda a, r, b, j=j: a - r[j] * b, p, m["inner_lr"], g)
            return loss_fn(p, task.query_x, task.query_y, 2, task.support_x)

        grads, (loss, _) = jax.jit(algorithm.task_grad)(meta, task, 0)
        np.testing.assert_allclose(loss, objective(meta), rtol=1e-12)
        expected = _central_differences(objective, meta, 1e-6)
        np.testing.assert_allclose(ravel_pytree(grads)[0], expected, rtol=1e-5, atol=1e-8)


def test_no_batch_norm_has_no_norm_parameters():
    *_, params = _conv("none")
    assert not any("Norm" in name for name in params)


def test_maml_with_per_step_batch_norm_is_mamlpp_with_its_switches_off():
    _, loss_fn, query_fn, step_net, params = _conv("per_step_running")
    inner = algorithms.InnerConfig(lr=0.1, steps=2)
    plain = algorithms.make_algorithm("maml", loss_fn, inner, query_fn, None, step_net)
    off = mamlpp.make(loss_fn, dataclasses.replace(inner, **ALL_OFF), query_fn, step_net)
    assert plain.name == "maml" and plain.per_step and set(plain.init(params)) == {"params"}
    task = _image_task(jax.random.key(3))
    chex.assert_trees_all_equal(
        plain.task_grad(plain.init(params), task, 0), off.task_grad(off.init(params), task, 0)
    )
    for name in ("anil", "boil"):
        with pytest.raises(UserInputError, match="cannot carry per-step batch-norm state"):
            algorithms.make_algorithm(name, loss_fn, inner, query_fn, None, step_net)


_SWITCH_STEPS = (4, 7, 25)  # first order, second order, then past the MSL annealing


def _every_switch_spec(bn_mode):
    _, loss_fn, query_fn, step_net, params = _conv(bn_mode, steps=3)
    inner = algorithms.InnerConfig(lr=0.1, steps=3, msl_anneal_steps=20, doa_steps=5)
    algorithm = mamlpp.make(loss_fn, inner, query_fn, step_net)
    spec = meta_objective.MetaBatch(
        algorithm=algorithm,
        query_fn=query_fn,
        sample_fn=_image_task,
        meta_batch_size=8,
        seed=0,
    )
    return spec, algorithm.init(params)


@functools.cache
def _every_switch_reference(bn_mode):
    """The unsharded meta-gradients at `_SWITCH_STEPS`, computed once for every device count."""
    spec, meta = _every_switch_spec(bn_mode)
    reference = jax.jit(parallel.reference_meta_grads, static_argnums=0)
    return [jax.device_get(reference(spec, meta, step)) for step in _SWITCH_STEPS]


@pytest.mark.parametrize(
    ("bn_mode", "num_devices"),
    # The default mode on every device count; running statistics (the same sharding, one
    # more reduced leaf) on two, to keep the suite's time in bounds.
    [("per_step_support", n) for n in (1, 2, 4, 8)] + [("per_step_running", n) for n in (2, 8)],
)
def test_sharded_equals_reference_with_every_switch_and_per_step_batch_norm(bn_mode, num_devices):
    spec, meta = _every_switch_spec(bn_mode)
    mesh = parallel.make_mesh(jax.devices()[:num_devices])
    sharded = jax.jit(parallel.make_meta_grad_fn(spec, mesh))
    rep = parallel.replicated(mesh)
    for step, reference in zip(_SWITCH_STEPS, _every_switch_reference(bn_mode), strict=True):
        got = sharded(jax.device_put(meta, rep), jax.device_put(jnp.int32(step), rep))
        chex.assert_trees_all_close(got, reference, rtol=1e-5, atol=1e-6)


def test_cosine_schedule_runs_from_meta_lr_to_its_minimum():
    config = tiny_config(algorithm="mamlpp", num_steps=100, meta_lr=1e-3, meta_lr_min=1e-5)
    schedule = state_lib.meta_lr_schedule(config)
    np.testing.assert_allclose(
        [schedule(0), schedule(50), schedule(100)], [1e-3, 5.05e-4, 1e-5], rtol=1e-6
    )
    config.algorithm = "maml"
    assert state_lib.resolve_schedule(config) == "constant"
    config.meta_lr_schedule = "cosine"
    assert float(state_lib.meta_lr_schedule(config)(100)) == pytest.approx(1e-5)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("meta_lr_schedule", "linear", "config.meta_lr_schedule must be 'auto'"),
        ("meta_lr_min", 0.0, "config.meta_lr_min must be a positive finite number"),
        ("mamlpp.msl", "yes", "config.mamlpp.msl must be True or False"),
        ("mamlpp.doa_steps", -2, "config.mamlpp.doa_steps must be a meta-step count"),
        ("meta_lr_min", 0.1, "would raise the rate"),
        ("learned_lr_scale", 0.0, "config.learned_lr_scale must be a positive finite number"),
        ("learned_lr_scale", float("nan"), "config.learned_lr_scale must be a positive finite"),
        ("mamlpp.lslr", False, "algorithm 'mamlpp' learns none here; leave"),
    ],
)
def test_bad_mamlpp_settings_are_named(field, value, message):
    config = tiny_config(algorithm="mamlpp")
    if field == "mamlpp.lslr":  # the scale is refused only where no rates are learned
        config.learned_lr_scale = 0.5
    parent, _, name = field.rpartition(".")
    target = config[parent] if parent else config
    with target.ignore_type():
        target[name] = value
    with pytest.raises(UserInputError, match=message):
        checks.validate_config(config)


@pytest.mark.parametrize(
    ("bn_mode", "clip"), [("none", 0.0), ("per_step_running", 0.0), ("none", 1.0)]
)
def test_learned_lr_scale_scales_the_rates_updates_alone(bn_mode, clip):
    config = omniglot_configs.get_config("tiny")
    config.update({"algorithm": "mamlpp", "meta_lr_schedule": "constant", "grad_clip_norm": clip})
    config.model.bn_mode = bn_mode
    meta = {
        "params": {"conv": {"kernel": jnp.ones((3, 2))}, "bn": {"running_mean": jnp.zeros(2)}},
        "inner_lr": {"conv": {"kernel": jnp.full((2,), 0.01)}},
    }
    if bn_mode == "none":
        del meta["params"]["bn"]
    grads = jax.tree.map(lambda a: jnp.arange(1.0, a.size + 1).reshape(a.shape), meta)

    def updates(scale):
        config.learned_lr_scale = scale
        checks.validate_config(config)
        tx, _ = state_lib.make_meta_optimizer(config)
        return tx.update(grads, tx.init(meta), meta)[0]

    full, tenth = updates(1.0), updates(0.1)
    chex.assert_trees_all_close(tenth["params"], full["params"])
    tenth_of_full = jax.tree.map(lambda u: 0.1 * u, full["inner_lr"])
    chex.assert_trees_all_close(tenth["inner_lr"], tenth_of_full)
    assert float(jnp.abs(full["inner_lr"]["conv"]["kernel"]).min()) > 1e-4
    config.algorithm = "maml"
    with pytest.raises(UserInputError, match=r"algorithm 'maml' learns none here"):
        checks.validate_config(config)


def test_resume_refuses_a_new_length_when_schedules_follow_it_and_accepts_older_runs():
    saved = json.loads(tiny_config(algorithm="mamlpp").to_json())
    with pytest.raises(UserInputError, match="num_steps"):
        resume_checks.check_resume_compatible(saved, tiny_config(algorithm="mamlpp", num_steps=400))
    # A run written before MAML++ existed (no such fields) resumes, and may be extended,
    # with today's config or with a config file as old as the run.
    old = json.loads(tiny_config().to_json())
    for field in ("meta_lr_schedule", "meta_lr_min", "mamlpp", "learned_lr_scale"):
        del old[field]
    resume_checks.check_resume_compatible(old, tiny_config(num_steps=400))
    resume_checks.check_resume_compatible(old, ml_collections.ConfigDict(old))
    conv = json.loads(omniglot_configs.get_config("tiny").to_json())
    old_conv = {k: v for k, v in conv.items() if k not in ("bn_momentum", "mamlpp")}
    old_conv["model"] = {k: v for k, v in conv["model"].items() if k != "bn_mode"}
    resume_checks.check_resume_compatible(old_conv, omniglot_configs.get_config("tiny"))
    resume_checks.check_resume_compatible(old_conv, ml_collections.ConfigDict(old_conv))
    # A MAML++ run saved before 0.5 has no mamlpp_bn_mode: its "auto" stays running
    # statistics, and it resumes under today's config once that is said.
    new = omniglot_configs.get_config("tiny")
    new.algorithm = "mamlpp"
    pp = json.loads(new.to_json())
    old_pp = {**pp, "model": {k: v for k, v in pp["model"].items() if k != "mamlpp_bn_mode"}}
    assert state_lib.resolve_bn_mode(ml_collections.ConfigDict(old_pp)) == "per_step_running"
    assert state_lib.resolve_bn_mode(new) == "per_step_support"
    with pytest.raises(UserInputError, match="mamlpp_bn_mode"):
        resume_checks.check_resume_compatible(old_pp, new)
    new.model.mamlpp_bn_mode = "per_step_running"
    resume_checks.check_resume_compatible(old_pp, new)


@pytest.fixture(scope="module")
def omniglot_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("omniglot")
    make_omniglot_set(root, "images_background_small1", {"Alpha": 4, "Beta": 4, "Gamma": 4})
    make_omniglot_set(root, "images_background_small2", {"Delta": 6})
    return root


# Running statistics: the mode whose resume carries extra state (their moving average).
# Support-set statistics keep none beyond the parameters and Adam's moments (the sharded
# test above covers the mode; the generic resume tests, the state).
@pytest.mark.parametrize("bn_mode", ["per_step_running"])
def test_resume_is_bit_identical_with_every_switch_on(bn_mode, omniglot_data, tmp_path):
    config = omniglot_configs.get_config("tiny")
    config.update(algorithm="mamlpp", inner_steps=2, data_dir=str(omniglot_data))
    config.omniglot.update(cache_dir=str(tmp_path / "cache"), held_out=("Delta",), num_held_out=0)
    config.model.bn_mode = bn_mode
    config.learned_lr_scale = 0.1  # its optimiser state (one more masked transform) restores
    # All five: "auto" resolves to per-step batch norm on the support set's statistics and
    # the cosine schedule; running statistics carry their moving average across the resume.
    running = bn_mode == "per_step_running"
    assert state_lib.resolve_bn_mode(config) == (
        "per_step_running" if running else "per_step_support"
    )
    assert state_lib.resolve_schedule(config) == "cosine"
    devices = jax.devices()[:4]  # the tiny meta-batch of 4
    straight = trainer.train_and_evaluate(config, str(tmp_path / "r"), devices)
    # As if interrupted after the step-3 checkpoint: the step-6 one is lost.
    shutil.rmtree(tmp_path / "r" / "checkpoints" / "6")
    resumed = trainer.train_and_evaluate(config, str(tmp_path / "r"), devices)
    assert set(resumed.meta_params) == {"params", "inner_lr"}
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    if running:
        # The trainer averaged batch statistics into the running ones (they start at 0 and 1).
        norm = jax.device_get(resumed.meta_params["params"]["StepNorm_0"])
        assert np.all(norm["running_mean"] != 0) and np.all(norm["running_var"] != 1)
    else:
        assert set(resumed.meta_params["params"]["SupportNorm_0"]) == {"scale", "offset"}
    records = read_jsonl(str(tmp_path / "r" / "metrics.jsonl"))
    # The learned rates' range is logged, as the final state has it.
    final_rates = np.concatenate(
        [np.ravel(r) for r in jax.tree.leaves(resumed.meta_params["inner_lr"])]
    )
    assert (records[-1]["inner_lr_min"], records[-1]["inner_lr_max"]) == pytest.approx(
        (final_rates.min(), final_rates.max()), rel=1e-6
    )
    assert records[-1]["inner_lr_min"] < records[-1]["inner_lr_max"]
    rates = [r["learning_rate"] for r in records]
    assert [r["step"] for r in records] == [2, 3, 4, 6]  # steps past 3 logged once
    assert rates == sorted(rates, reverse=True) and rates[-1] < rates[0]


def test_sinusoid_mamlpp_from_the_command_line_is_the_same_on_1_and_8_devices(tmp_path):
    losses = []
    for devices in (1, 8):
        workdir = tmp_path / f"d{devices}"
        proc, _ = run_module(
            "maml_dist.train",
            "--config=configs/sinusoid.py:tiny",
            f"--workdir={workdir}",
            f"--cpu_devices={devices}",
            "--config.algorithm=mamlpp",
            "--config.inner_steps=3",
            "--config.num_steps=60",
            "--config.task_batching=loop",
            "--config.reduction=ordered",
            "--compile_cache=off",
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        losses.append([r["meta_loss"] for r in read_jsonl(str(workdir / "metrics.jsonl"))])
    assert losses[0] == losses[1] and len(losses[0]) == 6
    proc, _ = run_module(
        "maml_dist.evaluate", f"--workdir={tmp_path / 'd8'}", "--num_tasks=50", "--cpu_devices=8"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "d8" / "eval" / "results.json").read_text())
    assert report["algorithm"] == "mamlpp" and report["meta_lr_schedule"] == "cosine"
    mean = report["results"][-1]["mean"]  # K = 20
    assert mean[3] < 0.95 * mean[0]  # adapting with the learned rates helps
