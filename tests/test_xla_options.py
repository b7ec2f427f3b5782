"""The trainer's programs are compiled with `xla_options.compiler_options()`."""

import jax
import pytest
from helpers import tiny_config
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from maml_dist import meta_objective, meta_test, meta_update, parallel, xla_options
from maml_dist import state as state_lib
from maml_dist.problem import make_problem


def test_options_are_measured_ones_on_cpu_only():
    assert xla_options.compiler_options("cpu") == {"xla_backend_optimization_level": 2}
    assert xla_options.compiler_options("gpu") is None
    assert xla_options.compiler_options("tpu") is None


def test_trainer_and_validation_programs_compile_with_the_options(monkeypatch):
    config = tiny_config()
    problem = make_problem(config)
    mesh = parallel.make_mesh(jax.devices()[:1])
    tx, _ = state_lib.make_meta_optimizer(config)
    spec = meta_objective.meta_batch_spec(config, problem)
    step = meta_update.make_train_step(parallel.make_meta_grad_fn(spec, mesh), tx)
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
    run = meta_update.make_multi_step(step, parallel.make_chunk_sampler(spec, mesh))
    with unknown:
        run.lower(state, 2).compile()
    curves = meta_test._curves_fn(problem.algorithm, 2, (problem.loss_fn,), mesh, "vmap")
    with unknown:
        curves.lower(state.meta_params, tasks).compile()
