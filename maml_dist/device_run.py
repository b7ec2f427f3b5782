"""The chunk runner of families sampled on the devices, its programs compiled ahead."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import jax
import jax.numpy as jnp
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from maml_dist import meta_update, parallel
from maml_dist.chunking import chunk_end
from maml_dist.problem import Problem


class DeviceRun:
    """`(state, n) -> (state, metrics)`: n meta-steps of a family sampled on the devices.

    The programs of the usual chunk length (`chunk_end` from step 0; every chunk but a
    resumed run's first and the run's last, where the intervals are multiples of one
    another) are compiled ahead, from the state's shapes alone. The steps' program starts
    compiling in a thread when this is made, while the caller initialises or restores the
    state. Where a chunk's tasks are sampled ahead (`chunk_sampler`), sampling is a
    second program (the sinusoid paper run's compile in 0.5 s and 1.1 s, as one program
    in 1.65 s), which the caller compiles after the state (`compile_sampler`): two
    compiles at a time on two cores, not three with the state's initialisation. The
    sinusoid paper run's first chunk ended 0.2 to 0.6 s sooner (four pairs of runs;
    docs/benchmarks.md, "The trainer against a hand-written loop", version 0.8). Other lengths
    compile on first use. (A resumed run whose first chunk has another length compiles
    the sampler before it too: ~0.5 s once, for the chunks after it.)

    `shorter` is the sampler's compile (set by `compile_sampler`), or the only one: a
    core is free after it.

    A compile is local to its process (nothing runs), so this holds on any number of
    devices and processes. JAX settings a caller scoped to its own thread
    (`jax.enable_x64`, ...) reach the sampler's compile but not the steps'; the trainer
    sets none.
    """

    def __init__(self, config, problem: Problem, spec, mesh, train_step, abstract_state):
        """`abstract_state`: the state's shapes and shardings; None compiles nothing ahead."""
        sampler = chunk_sampler(config, problem, spec, mesh)
        self.data = None
        if problem.device_episodes is not None:
            self.data = parallel.put_replicated(problem.device_episodes.tables, mesh)
            logging.info(
                "Episodes are drawn on the devices from %d images (%.1f MiB on each device).",
                self.data.images.shape[0],
                problem.device_episodes.tables.nbytes / 2**20,
            )
        self.length = n = chunk_end(0, config)
        self._sampler_args = None
        logging.info("compiling the meta-step...")
        if sampler is None:
            self.sample, self.run = None, meta_update.make_multi_step(train_step)
        else:
            self.sample = meta_update.make_chunk_sample(sampler)
            self.run = meta_update.make_multi_step_over(train_step)
        if abstract_state is None:  # nothing to compile ahead
            self.length, self.shorter = None, Future()
            self.shorter.set_result(None)
            return
        pool = ThreadPoolExecutor(1, thread_name_prefix="compile")
        if sampler is None:
            self.compiled = pool.submit(
                lambda: self.run.lower(abstract_state, n, self.data).compile()
            )
            self.shorter = self.compiled
        else:
            sharding = NamedSharding(mesh, P(None, parallel.AXIS))
            batches = jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                jax.eval_shape(lambda: sampler(jnp.arange(n), self.data)),
            )
            run = pool.submit(lambda: self.run.lower(abstract_state, batches).compile())
            self._sampler_args = (abstract_state.step, n)
            self.shorter = Future()  # set by `compile_sampler`
            self.compiled = _Both(self.shorter, run)
        pool.shutdown(wait=False)  # the thread ends with the compile

    def compile_sampler(self) -> None:
        """Compiles the chunk sampler ahead, in this thread, unless done or not needed.

        The trainer calls it once the state is built, before the validation's thread
        (which waits on `shorter`) starts; the first chunk of the usual length would
        otherwise. A failed compile is raised by that chunk, as the steps' would be.
        """
        args, self._sampler_args = self._sampler_args, None
        if args is None:
            return
        try:
            compiled = self.sample.lower(*args).compile()
        except BaseException as e:
            # Raised by `compiled.result()` at the first chunk of the usual length;
            # `shorter` is resolved either way (Ctrl-C included), so no waiter hangs.
            self.shorter.set_exception(e)
            if not isinstance(e, Exception):
                raise
            return
        self.shorter.set_result(compiled)

    def __call__(self, state, n: int):
        """Runs n steps from `state` (donated); raises what a compile raised."""
        if self.sample is None:
            if n == self.length:
                return self.compiled.result()(state, self.data)
            return self.run(state, n, self.data)
        if n == self.length:
            self.compile_sampler()
            sample, run = self.compiled.result()
            return run(state, sample(state.step))
        return self.run(state, self.sample(state.step, n))


class _Both:
    """Two futures as one: `result()` is both results, `done()` once both are."""

    def __init__(self, *futures: Future):
        self.futures = futures

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def result(self) -> tuple:
        return tuple(f.result() for f in self.futures)


def chunk_sampler(config, problem, spec, mesh):
    """`parallel.make_chunk_sampler`'s sampler where a chunk's tasks are small, else None.

    Families that draw from tables (image episodes) sample inside each step: their tasks
    are large and their steps long, so sampling ahead would cost memory and save little.
    """
    if problem.device_episodes is not None:
        return None
    # A chunk never holds more than log_every steps (`chunk_end`). The whole meta-batch's
    # size decides, not a device's share: sampling ahead changes the rounding, and the
    # same run must make the same choice on any device count ("loop" + "ordered").
    if parallel.chunk_task_bytes(spec, config.log_every) > parallel.PRESAMPLE_MAX_BYTES:
        return None
    return parallel.make_chunk_sampler(spec, mesh)
