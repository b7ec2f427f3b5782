"""Sharded meta-loss and meta-gradient equal the unsharded reference on 1, 2, 4, 8 devices."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec as P

from maml_dist import meta_objective, meta_update, parallel
from maml_dist import state as state_lib
from maml_dist.problem import make_problem
from maml_dist.types import TRAIN_STREAM, stream_key, task_key

# float32 sums of 16-25 task terms in a different order (per device, then across devices)
# differ from one flat sum by a few ulps: rtol 1e-5 is ~100 ulps, far below any real bug
# (a wrong task assignment or a device-summed inner gradient changes results by O(1)).
# Gradient elements reach ~20, whose ulp is 2e-6, and some cancel to ~0.1 in the sum:
# atol covers a few such ulps (one element of 1,600 differed by 2.6e-6 once the inner
# steps were unrolled and XLA fused them differently).
RTOL, ATOL = 1e-5, 1e-5
STEP = 7


# The same settings give the same spec object, so a test on 1, 2, 4 or 8 devices reuses
# the unsharded reference already traced and compiled for another device count (the
# spec is the reference's static argument).
@functools.cache
def _spec(meta_batch_size, **overrides):
    config = tiny_config(meta_batch_size=meta_batch_size, **overrides)
    problem = make_problem(config)
    params = problem.model.init(jax.random.key(0), problem.family.example_input())["params"]
    return meta_objective.meta_batch_spec(config, problem), problem.algorithm.init(params)


_reference_grads = jax.jit(parallel.reference_meta_grads, static_argnums=0)


def _reference(spec, params):
    return _reference_grads(spec, params, STEP)


def _sharded(spec, params, num_devices):
    mesh = parallel.make_mesh(jax.devices()[:num_devices])
    fn = jax.jit(parallel.make_meta_grad_fn(spec, mesh))
    rep = parallel.replicated(mesh)
    return fn(jax.device_put(params, rep), jax.device_put(jnp.int32(STEP), rep))


@pytest.mark.parametrize("num_devices", [1, 2, 4, 8])
@pytest.mark.parametrize(
    ("batching", "reduction", "first_order"),
    [
        ("vmap", "sum", False),
        ("vmap", "sum", True),
        ("loop", "ordered", False),
        ("unroll", "sum", False),
    ],
)
def test_sharded_equals_reference(num_devices, batching, reduction, first_order):
    spec, params = _spec(
        16, inner_steps=2, first_order=first_order, task_batching=batching, reduction=reduction
    )
    chex.assert_trees_all_close(
        _sharded(spec, params, num_devices), _reference(spec, params), rtol=RTOL, atol=ATOL
    )


@pytest.mark.parametrize("num_devices", [1, 2, 4, 8])
@pytest.mark.parametrize(
    "algorithm", ["fomaml", "metasgd", "anil", "boil", "reptile", "imaml", "mamlpp"]
)
def test_every_algorithm_sharded_equals_reference(num_devices, algorithm):
    # Padded (25 tasks) so masking is exercised too; 3 inner steps so that Reptile and
    # iMAML differ from one scaled support gradient.
    # iMAML's line search accepts or rejects a step on a comparison that an ulp can flip in
    # another program, so this check (another vmap width) uses its fixed steps; the line
    # search is checked bit for bit across device counts in the deterministic mode below.
    extra = {"imaml_line_search": 0} if algorithm == "imaml" else {}
    spec, meta_params = _spec(25, pad_meta_batch=True, inner_steps=3, algorithm=algorithm, **extra)
    reference = _reference(spec, meta_params)
    sharded = _sharded(spec, meta_params, num_devices)
    assert set(reference[0]) == set(meta_params)  # a gradient for every meta-parameter
    if algorithm != "imaml":
        chex.assert_trees_all_close(sharded, reference, rtol=RTOL, atol=ATOL)
        return
    # Conjugate gradient amplifies the ulp-level differences of another program (another
    # vmap width, other fusions) by the system's condition number: measured up to 1e-3
    # relative on single small elements. So iMAML is compared as whole vectors, 1e-4 of the
    # norm (a wrong task assignment is O(1)), and bit for bit across device counts in the
    # deterministic mode below.
    flat = lambda t: np.asarray(ravel_pytree(t)[0])  # noqa: E731
    diff = np.linalg.norm(flat(sharded) - flat(reference))
    assert diff <= 1e-4 * np.linalg.norm(flat(reference)), diff


def test_imaml_deterministic_mode_is_bit_identical_across_device_counts():
    spec, meta_params = _spec(
        25,
        pad_meta_batch=True,
        inner_steps=3,
        algorithm="imaml",
        task_batching="loop",
        reduction="ordered",
    )
    one = jax.device_get(_sharded(spec, meta_params, 1))
    for n in (2, 8):
        chex.assert_trees_all_equal(one, jax.device_get(_sharded(spec, meta_params, n)))


def test_padded_task_with_nan_loss_does_not_poison_the_sum():
    terms = (
        {"params": jnp.array([[1.0, 2.0], [jnp.nan, jnp.inf]])},
        {"meta_loss": jnp.array([3.0, jnp.nan])},
    )
    rows, unravel = meta_objective.weighted_rows(terms, jnp.array([1.0, 0.0]))
    grads, metrics = unravel(rows.sum(0))
    np.testing.assert_array_equal(grads["params"], [1.0, 2.0])
    assert float(metrics["meta_loss"]) == 3.0


@pytest.mark.parametrize("num_devices", [2, 4, 8])
def test_padded_meta_batch_equals_reference(num_devices):
    # 25 tasks (the paper's meta-batch) on 2/4/8 devices: padded to 26/28/32 with masked tasks.
    spec, params = _spec(25, pad_meta_batch=True)
    chex.assert_trees_all_close(
        _sharded(spec, params, num_devices), _reference(spec, params), rtol=RTOL, atol=ATOL
    )


def test_loop_and_ordered_reduction_are_bit_identical_across_device_counts():
    spec, params = _spec(25, pad_meta_batch=True, task_batching="loop", reduction="ordered")
    one = jax.device_get(_sharded(spec, params, 1))
    for n in (2, 4, 8):
        other = jax.device_get(_sharded(spec, params, n))
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(other), strict=True):
            np.testing.assert_array_equal(a, b)


def test_jax_still_sums_grads_of_replicated_params_without_pcast():
    """The README trap 1 trap that `make_meta_grad_fn` guards with `pcast`.

    If JAX changes this behaviour the guard may be dropped; until then, it is needed.
    """
    mesh = parallel.make_mesh(jax.devices()[:4])

    def body(w, x):
        return jax.grad(lambda w: jnp.sum(w * x))(w)[None]

    x = jax.device_put(jnp.arange(4.0), jax.sharding.NamedSharding(mesh, P("tasks")))
    w = jax.device_put(jnp.float32(1.0), parallel.replicated(mesh))
    fn = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P("tasks")), out_specs=P("tasks")))
    per_device = fn(w, x)
    # Each device's own gradient is its x; what comes back is the sum over devices.
    np.testing.assert_array_equal(per_device, np.full(4, 6.0))


def test_layout():
    assert meta_objective.TaskLayout(25, 8).per_device == 4
    assert meta_objective.TaskLayout(25, 8).padded_size == 32
    assert meta_objective.TaskLayout(24, 8).padded_size == 24
    weights = meta_objective.task_weights(jnp.arange(32), 25)
    assert float(weights.sum()) == pytest.approx(1.0)
    assert float(weights[25:].sum()) == 0.0


def _host_tasks(spec, n):
    """n sinusoid tasks sampled up front, as a host loader would hand them over."""
    root = stream_key(spec.seed, TRAIN_STREAM)
    keys = [task_key(root, STEP, i) for i in range(n)]
    return jax.device_get(jax.vmap(lambda k: spec.sample_fn(k, None))(jnp.stack(keys)))


@pytest.mark.parametrize("num_devices", [1, 2, 4, 8])
@pytest.mark.parametrize("batching", ["vmap", "loop", "unroll"])
def test_host_sampled_tasks_sharded_equal_reference(num_devices, batching):
    spec, params = _spec(25, pad_meta_batch=True, task_batching=batching)
    layout = meta_objective.TaskLayout(25, num_devices)
    tasks = _host_tasks(spec, layout.padded_size)  # padded rows get weight 0
    host_spec = dataclasses.replace(spec, sample_fn=None)
    reference = jax.jit(lambda p, t: parallel.reference_meta_grads(host_spec, p, STEP, t))(
        params, jax.tree.map(lambda a: a[:25], tasks)
    )
    mesh = parallel.make_mesh(jax.devices()[:num_devices])
    rep = parallel.replicated(mesh)
    sharded = jax.device_put(tasks, jax.sharding.NamedSharding(mesh, P("tasks")))
    fn = jax.jit(parallel.make_meta_grad_fn(host_spec, mesh))
    result = fn(jax.device_put(params, rep), jax.device_put(jnp.int32(STEP), rep), sharded)
    chex.assert_trees_all_close(result, reference, rtol=RTOL, atol=ATOL)
    # And the same tasks sampled on the device give the same numbers.
    chex.assert_trees_all_close(result, _reference(spec, params), rtol=RTOL, atol=ATOL)


def test_multi_step_over_host_batches_equals_device_sampling():
    spec, _ = _spec(8)
    config = tiny_config(meta_batch_size=8)
    problem = make_problem(config)
    tx, _ = state_lib.make_meta_optimizer(config)
    mesh = parallel.make_mesh(jax.devices()[:4])
    rep = parallel.replicated(mesh)

    def fresh():
        return state_lib.init_state(
            problem.model, problem.family.example_input(), tx, 0, problem.algorithm, rep
        )

    device = meta_update.make_multi_step(
        meta_update.make_train_step(parallel.make_meta_grad_fn(spec, mesh), tx)
    )
    _, device_metrics = device(fresh(), 3)
    host_spec = dataclasses.replace(spec, sample_fn=None)
    root = stream_key(spec.seed, TRAIN_STREAM)
    batches = jax.vmap(
        lambda s: jax.vmap(lambda i: spec.sample_fn(task_key(root, s, i), None))(jnp.arange(8))
    )(jnp.arange(3))
    batches = jax.device_put(
        jax.device_get(batches), jax.sharding.NamedSharding(mesh, P(None, "tasks"))
    )
    host = meta_update.make_multi_step_over(
        meta_update.make_train_step(parallel.make_meta_grad_fn(host_spec, mesh), tx)
    )
    _, host_metrics = host(fresh(), batches)
    chex.assert_trees_all_close(host_metrics, device_metrics, rtol=1e-5, atol=1e-6)


def test_the_meta_batch_loss_is_differentiated_once_where_the_algorithm_allows():
    spec, _ = _spec(24)
    layout = meta_objective.TaskLayout(24, 8)
    assert meta_objective.fuses_task_sum(spec, layout)  # MAML, vmap, sum: one gradient of the sum
    for change in (
        {"batching": "loop"},
        {"reduction": "ordered"},
        {"fuse_collectives": False},
        {"algorithm": spec.algorithm._replace(meta_loss=None)},  # iMAML, Reptile
        {"tasks_per_vmap": 5},  # groups of 5, 5 and 2 for a device's 12 tasks (2 devices)
    ):
        assert not meta_objective.fuses_task_sum(
            dataclasses.replace(spec, **change), meta_objective.TaskLayout(24, 2)
        )
    # Groups of 4 of those 12: one gradient of each group's sum.
    assert meta_objective.fuses_task_sum(
        dataclasses.replace(spec, tasks_per_vmap=4), meta_objective.TaskLayout(24, 2)
    )
    # Padding: a padded task's backward pass would still run in one gradient of the sum.
    assert not meta_objective.fuses_task_sum(spec, meta_objective.TaskLayout(24, 5))


@pytest.mark.parametrize("num_devices", [1, 2, 4, 8])
def test_vmap_groups_equal_the_reference(num_devices):
    # 24 tasks: 24, 12, 6 or 3 a device. Groups of 3 divide each (one gradient a group,
    # summed); groups of 5 leave a smaller last group (per-task gradients, lax.map's rule)
    # or exceed a device's 3 tasks (all at once). MAML fuses the sum; Meta-SGD never does.
    for algorithm in ("maml", "metasgd"):
        spec, params = _spec(24, inner_steps=2, algorithm=algorithm, tasks_per_vmap=3)
        assert spec.tasks_per_vmap == 3  # from the config
        reference = _reference(spec, params)
        layout = meta_objective.TaskLayout(24, num_devices)
        for size in (3, 5):
            grouped = dataclasses.replace(spec, tasks_per_vmap=size)
            fused = meta_objective.fuses_task_sum(grouped, layout)
            whole = size >= layout.per_device or layout.per_device % size == 0
            assert fused == (algorithm == "maml" and whole)
            chex.assert_trees_all_close(
                _sharded(grouped, params, num_devices), reference, rtol=RTOL, atol=ATOL
            )
        # Tasks handed in (the host feed, or sampled ahead for a chunk) are grouped too:
        # MAML's in equal groups, Meta-SGD's with a smaller last one.
        size = 3 if algorithm == "maml" else 5
        host_spec = dataclasses.replace(spec, sample_fn=None, tasks_per_vmap=size)
        mesh = parallel.make_mesh(jax.devices()[:num_devices])
        rep = parallel.replicated(mesh)
        tasks = jax.device_put(_host_tasks(spec, 24), jax.sharding.NamedSharding(mesh, P("tasks")))
        fn = jax.jit(parallel.make_meta_grad_fn(host_spec, mesh))
        given = fn(jax.device_put(params, rep), jax.device_put(jnp.int32(STEP), rep), tasks)
        chex.assert_trees_all_close(given, reference, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("algorithm", ["maml", "metasgd"])  # one gradient a group; per task
def test_vmap_groups_bound_the_steps_memory(algorithm):
    # XLA's temporary memory of the meta-gradient holds every vmapped task's activations
    # at once: with groups it holds one group's, so it falls with the group size.
    spec, params = _spec(64, inner_steps=5, algorithm=algorithm)
    mesh = parallel.make_mesh(jax.devices()[:1])
    rep = parallel.replicated(mesh)
    args = (jax.device_put(params, rep), jax.device_put(jnp.int32(STEP), rep))

    def temp_bytes(size):
        fn = parallel.make_meta_grad_fn(dataclasses.replace(spec, tasks_per_vmap=size), mesh)
        return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes

    whole, by_16, by_4 = temp_bytes(0), temp_bytes(16), temp_bytes(4)
    assert by_4 < by_16 < whole / 2, (whole, by_16, by_4)


def test_a_diverged_padded_task_reaches_neither_gradient_nor_metrics():
    spec, params = _spec(25, pad_meta_batch=True)
    tasks = jax.tree.map(jnp.asarray, _host_tasks(spec, 32))  # 25 on 8 devices: 7 padded
    tasks = tasks.replace(support_y=tasks.support_y.at[30].set(jnp.inf))
    host_spec = dataclasses.replace(spec, sample_fn=None)
    reference = jax.jit(lambda p, t: parallel.reference_meta_grads(host_spec, p, STEP, t))(
        params, jax.tree.map(lambda a: a[:25], tasks)
    )
    mesh = parallel.make_mesh(jax.devices())
    rep = parallel.replicated(mesh)
    sharded = jax.device_put(tasks, jax.sharding.NamedSharding(mesh, P("tasks")))
    fn = jax.jit(parallel.make_meta_grad_fn(host_spec, mesh))
    result = fn(jax.device_put(params, rep), jax.device_put(jnp.int32(STEP), rep), sharded)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(result))
    chex.assert_trees_all_close(result, reference, rtol=RTOL, atol=ATOL)
    # One gradient of the sum over these tasks would not be finite: why padding rules it out.
    grads, _ = jax.jit(
        lambda p, t: meta_objective.weighted_task_sum(host_spec, p, STEP, jnp.arange(32), t)
    )(params, tasks)
    assert not all(np.isfinite(x).all() for x in jax.tree.leaves(grads))


@pytest.mark.parametrize("num_devices", [1, 4])
def test_a_chunk_sampled_ahead_holds_the_tasks_each_step_would_draw(num_devices):
    spec, _ = _spec(10)  # padded to 12 on 4 devices
    mesh = parallel.make_mesh(jax.devices()[:num_devices])
    layout = meta_objective.TaskLayout(10, num_devices)
    steps = jnp.arange(3) + STEP
    ahead = jax.jit(parallel.make_chunk_sampler(spec, mesh))(steps, None)
    root = stream_key(spec.seed, TRAIN_STREAM)
    each = jax.vmap(
        lambda s: jax.vmap(lambda i: spec.sample_fn(task_key(root, s, i), None))(
            jnp.arange(layout.padded_size)
        )
    )(steps)
    chex.assert_trees_all_equal(jax.device_get(ahead), jax.device_get(each))
    assert parallel.chunk_task_bytes(spec, 3, num_devices) == sum(
        a.nbytes // num_devices for a in jax.tree.leaves(jax.device_get(each))
    )
    # Training on them is training on the tasks each step samples (to rounding: XLA
    # fuses the sampling into the step differently).
    config = tiny_config(meta_batch_size=10, pad_meta_batch=True)
    problem = make_problem(config)
    tx, _ = state_lib.make_meta_optimizer(config)
    rep = parallel.replicated(mesh)
    step = meta_update.make_train_step(parallel.make_meta_grad_fn(spec, mesh), tx)
    results = []
    for sampler in (None, parallel.make_chunk_sampler(spec, mesh)):
        state = state_lib.init_state(
            problem.model, problem.family.example_input(), tx, 0, problem.algorithm, rep
        )
        results.append(meta_update.make_multi_step(step, sampler)(state, 3))
    chex.assert_trees_all_close(*results, rtol=RTOL, atol=ATOL)
