"""The trainer's programs are compiled with `xla_options.compiler_options()`."""

import chex
import jax
import jax.numpy as jnp
import pytest
from helpers import tiny_config
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from maml_dist import meta_test, models, parallel, xla_options
from maml_dist import state as state_lib
from maml_dist.problem import make_problem


def test_options_are_measured_ones_on_cpu_only():
    assert xla_options.compiler_options("cpu") == {"xla_backend_optimization_level": 2}
    assert xla_options.draw_options("cpu") == {
        "xla_backend_optimization_level": 2,
        "xla_cpu_use_fusion_emitters": False,
    }
    for platform in ("gpu", "tpu"):
        assert xla_options.compiler_options(platform) is None
        assert xla_options.draw_options(platform) is None


def _draws(config, model=None):
    """The initial state, fixed tasks and a chunk's tasks of `config` (model: its own)."""
    problem = make_problem(config)
    mesh = parallel.make_mesh(jax.devices()[:1])
    tx, _ = state_lib.make_meta_optimizer(config)
    replicated = parallel.replicated(mesh)
    model, example = (problem.model, problem.family.example_input()) if model is None else model
    state = state_lib.init_state(model, example, tx, config.seed, problem.algorithm, replicated)
    tasks = meta_test.sample_tasks(problem.family, 0, 1, 7, config.shots, config.num_query)
    spec = parallel.meta_batch_spec(config, problem)
    chunk = parallel.make_chunk_sample(parallel.make_chunk_sampler(spec, mesh))(state.step, 3)
    return jax.device_get((state, tasks, chunk))


@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_draws_are_the_same_bits_under_both_option_sets(monkeypatch, net):
    # `draw_options` only compiles faster: what it draws must not change (a run's tasks
    # and initial weights, and the evaluator's fixed test tasks).
    config = tiny_config()
    model = None
    if net == "conv":  # the Omniglot net's initialisation (batch norm, convs, head)
        model = (models.ConvNet(num_classes=5, conv_impl="slices"), jnp.zeros((1, 28, 28, 1)))
    faster = _draws(config, model)
    monkeypatch.setattr(xla_options, "_CPU_DRAW", {})
    plain = _draws(config, model)
    chex.assert_trees_all_equal(faster, plain)


def test_trainer_and_validation_programs_compile_with_the_options(monkeypatch):
    config = tiny_config()
    problem = make_problem(config)
    mesh = parallel.make_mesh(jax.devices()[:1])
    tx, _ = state_lib.make_meta_optimizer(config)
    spec = parallel.meta_batch_spec(config, problem)
    step = parallel.make_train_step(parallel.make_meta_grad_fn(spec, mesh), tx)
    init = (
        problem.model,
        problem.family.example_input(),
        tx,
        config.seed,
        problem.algorithm,
        parallel.replicated(mesh),
    )
    state = state_lib.init_state(*init)
    tasks = meta_test.sample_tasks(problem.family, 0, 1, 4, config.shots, config.num_query)
    tasks = jax.device_put(tasks, NamedSharding(mesh, P(parallel.AXIS)))

    # An option XLA does not know fails the compile: that proves the options reach it.
    monkeypatch.setattr(xla_options, "_CPU", {"not_an_xla_option": 1})
    unknown = pytest.raises(jax.errors.JaxRuntimeError, match="not_an_xla_option")
    with unknown:
        state_lib.init_state(*init)
    with unknown:
        meta_test.sample_tasks(problem.family, 0, 1, 4, config.shots, config.num_query)
    run = parallel.make_multi_step(step, parallel.make_chunk_sampler(spec, mesh))
    with unknown:
        run.lower(state, 2).compile()
    curves = meta_test._curves_fn(problem.algorithm, 2, (problem.loss_fn,), mesh, "vmap")
    with unknown:
        curves.lower(state.meta_params, tasks).compile()
