"""In-training validation: a fixed validation task set and one pictured task.

Regression families get the paper's fit figure; classification families a grid of one
episode's support and query images with the adapted network's predicted labels. The
trainer gets its `Monitor` from `start_monitor`, built beside the first compile.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import jax
import ml_collections
import numpy as np

from maml_dist import meta_test, plotting
from maml_dist.types import IMAGE_STREAM, VALIDATION_STREAM

# Points on which the regression image draws the true function and the predictions.
_IMAGE_POINTS = 200


class Monitor:
    """Scores the meta-parameters on validation tasks that training never samples."""

    def __init__(self, config: ml_collections.ConfigDict, problem, sharding):
        """Samples the validation set once; the pictured task is placed with `sharding`."""
        self.problem = problem
        self.steps, self.train_steps = config.eval_inner_steps, config.inner_steps
        self.batching = config.get("task_batching", "auto")
        self.tasks = problem.fixed_tasks(
            config.seed, VALIDATION_STREAM, config.eval_tasks, config.shots, config.num_query
        )
        regression = problem.family.kind == "regression"
        image_query = _IMAGE_POINTS if regression else config.num_query
        image_task = problem.fixed_tasks(config.seed, IMAGE_STREAM, 1, config.shots, image_query)
        # Indexed on the host: indexing on the device compiles a program per array shape.
        image_task = jax.tree.map(lambda a: np.asarray(a)[0], image_task)
        self.image_task = jax.device_put(image_task, sharding)
        self._figure = None  # the regression figure, built on first draw

    def scalars(self, meta_params) -> dict[str, float]:
        """Mean validation metric (and loss, if it differs) after 0..eval_inner_steps steps."""
        names, metrics = self._metrics()
        curves = meta_test.adaptation_curves(
            self.problem.algorithm,
            meta_params,
            self.tasks,
            self.steps,
            metrics,
            batching=self.batching,
        )
        mean = curves.mean(axis=0)
        return {
            f"eval_{name}_after_{k}_steps": float(v)
            for j, name in enumerate(names)
            for k, v in enumerate(mean[:, j])
        }

    def warm_up(self, meta_params) -> None:
        """Compiles what `scalars` and `image` run, scoring one chunk of the tasks only.

        Every chunk of `scalars` runs one program, so one chunk compiles it at a tenth of
        a validation's compute (100 tasks, 10 per chunk on one CPU device). Nothing is
        drawn: the trainer draws in a thread of its own, beside the training.
        """
        devices = len(jax.tree.leaves(meta_params)[0].sharding.device_set)
        first = min(self.tasks.support_x.shape[0], meta_test.default_chunk(devices))
        some = jax.tree.map(lambda a: np.asarray(a)[:first], self.tasks)  # no slice compiles
        _, metrics = self._metrics()
        meta_test.adaptation_curves(
            self.problem.algorithm, meta_params, some, self.steps, metrics, batching=self.batching
        )
        self.picture(meta_params, render=False)

    def _metrics(self) -> tuple[tuple[str, ...], tuple]:
        """Names and functions of the scored metrics: the family's, and the loss if it differs."""
        p = self.problem
        if p.score_is_loss:
            return (p.family.metric,), (p.score_fn,)
        return (p.family.metric, "loss"), (p.score_fn, p.loss_fn)

    def image(self, meta_params, render: bool = True) -> np.ndarray | None:
        """The picture of one validation task before and after `inner_steps` steps.

        Every process must call this (the predictions are a computation over the global
        mesh); only those with `render` draw the figure, the others get None.
        """
        draw = self.picture(meta_params, render)
        return None if draw is None else draw()

    def picture(self, meta_params, render: bool = True) -> Callable[[], np.ndarray] | None:
        """`image` in two halves: dispatches the predictions, returns what draws them.

        The returned function (None without `render`) fetches the predictions and draws
        them, ~35 ms of matplotlib for the sinusoid figure: the trainer runs it in a
        thread beside the next chunk. `meta_params` may be donated right after this
        returns: the dispatched computation holds its own reference.
        """
        task = self.image_task
        before, after = meta_test.adapted_predictions(
            self.problem.model,
            self.problem.algorithm,
            meta_params,
            task,
            self.train_steps,
            task.query_x,
        )
        if not render:
            return None
        return functools.partial(self._draw, task, before, after)

    def _draw(self, task, before, after) -> np.ndarray:
        task, before, after = jax.device_get((task, before, after))
        if self.problem.family.kind == "classification":
            return plotting.episode_image(
                task.support_x,
                task.support_y,
                task.query_x,
                task.query_y,
                after.argmax(-1),
                ink=self.problem.family.ink,
            )
        if self._figure is None:  # the same task every time: the figure is kept
            self._figure = plotting.AdaptationFigure(
                task.query_x[:, 0],
                task.query_y[:, 0],
                task.support_x[:, 0],
                task.support_y[:, 0],
                self.train_steps,
            )
        return self._figure.image(before[:, 0], after[:, 0])


def start_monitor(config, problem, replicated, meta_params, after) -> Future:
    """The run's `Monitor`, as a future; in one process, built in a thread.

    Building it samples the fixed validation tasks, and its first use compiles the
    validation programs: about 1.5 s of the sinusoid paper run (docs/benchmarks.md, "The trainer
    against a hand-written loop") that a thread does once `after` (the sampler's
    compile, or the only one) is done, beside the steps' compile and the first chunks:
    begun beside all of them, on two cores, it made the meta-step's compile, the run's
    critical path, 0.6 to 0.9 s longer. The thread scores a copy
    of the initial meta-parameters on one chunk of the tasks to compile those programs
    (the state's own are donated to the first chunk). The loop checks at every chunk,
    without waiting, whether it failed.

    It is built here, in order, with several processes or several accelerators: its
    programs run over the mesh, and collectives of two programs running at once could be
    ordered differently on different devices. JAX settings a caller scoped to its own
    thread (`jax.enable_x64`, ...) do not reach the thread; the trainer sets none.
    """
    num_devices = len(replicated.mesh.devices.flat)
    if jax.process_count() > 1 or (jax.default_backend() != "cpu" and num_devices > 1):
        done = Future()
        done.set_result(Monitor(config, problem, replicated))
        return done
    # A host copy: copying on the device would compile a program per parameter shape.
    params = jax.device_get(meta_params)

    def build() -> Monitor:
        if after is not None:
            with contextlib.suppress(Exception):  # the loop raises a failed compile itself
                after.result()
        monitor = Monitor(config, problem, replicated)
        monitor.warm_up(jax.device_put(params, replicated))
        return monitor

    pool = ThreadPoolExecutor(1, thread_name_prefix="monitor")
    future = pool.submit(build)
    pool.shutdown(wait=False)  # the thread ends with `build`; nobody waits for it here
    return future
