"""The in-training validation: warming it up compiles everything a validation runs."""

import jax
from helpers import tiny_config

from maml_dist import parallel
from maml_dist.monitor import Monitor
from maml_dist.problem import make_problem

# JAX reports every XLA compile (or persistent-cache load) under this event name.
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **_: _compiles.append(event) if event == COMPILE_EVENT else None
)


def _monitor(config, sharding):
    problem = make_problem(config)  # a new algorithm: none of its programs compiled yet
    params = problem.model.init(jax.random.key(0), problem.family.example_input())["params"]
    return Monitor(config, problem, sharding), jax.device_put(
        problem.algorithm.init(params), sharding
    )


def test_warm_up_compiles_what_a_validation_runs_on_one_chunk():
    # 30 tasks in chunks of 10 on one CPU device: the warm-up scores the first 10.
    config = tiny_config(eval_tasks=30)
    sharding = parallel.replicated(parallel.make_mesh(jax.devices()[:1]))
    cold, params = _monitor(config, sharding)
    before = len(_compiles)
    expected = cold.scalars(params)
    cold.image(params, render=False)
    assert len(_compiles) > before  # what the warm-up is there to take off the loop

    warm, params = _monitor(config, sharding)
    warm.warm_up(params)
    before = len(_compiles)
    assert warm.scalars(params) == expected
    warm.image(params, render=False)
    assert len(_compiles) == before
