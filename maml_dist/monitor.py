"""In-training validation: a fixed validation task set and the adaptation image.

The image is drawn for 1-D regression families (sinusoid).
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from maml_dist import meta_test, plotting
from maml_dist.tasks.base import IMAGE_STREAM, VALIDATION_STREAM

# Points on which the adaptation image draws the true function and the predictions.
_IMAGE_POINTS = 200


class Monitor:
    """Scores the meta-parameters on validation tasks that training never samples."""

    def __init__(self, config: ml_collections.ConfigDict, problem, sharding):
        """Samples the validation set once and places it with `sharding`."""
        family = problem.family
        self.family, self.model, self.loss_fn = family, problem.model, problem.loss_fn
        self.lr, self.steps, self.train_steps = (
            config.inner_lr,
            config.eval_inner_steps,
            config.inner_steps,
        )

        def place(tasks):
            return jax.device_put(jax.device_get(tasks), sharding)

        self.tasks = place(
            meta_test.sample_tasks(
                family,
                config.seed,
                VALIDATION_STREAM,
                config.eval_tasks,
                config.shots,
                config.num_query,
            )
        )
        self.image_task = place(
            meta_test.sample_tasks(
                family, config.seed, IMAGE_STREAM, 1, config.shots, _IMAGE_POINTS
            )
        )

    def scalars(self, params) -> dict[str, float]:
        """Mean validation metric after 0..eval_inner_steps inner steps."""
        curves = meta_test.adaptation_curves(self.loss_fn, params, self.tasks, self.lr, self.steps)
        mean = np.asarray(jax.device_get(curves)).mean(axis=0)
        name = self.family.metric
        return {f"eval_{name}_after_{k}_steps": float(v) for k, v in enumerate(mean)}

    def image(self, params, render: bool = True) -> np.ndarray | None:
        """The paper's figure for one validation task: truth, support, before and after.

        Every process must call this (the predictions are a computation over the global
        mesh); only those with `render` draw the figure, the others get None.
        """
        task = jax.tree.map(lambda a: a[0], self.image_task)
        before, after = meta_test.adapted_predictions(
            self.model, self.loss_fn, params, task, self.lr, self.train_steps, task.query_x
        )
        if not render:
            return None
        task, before, after = jax.device_get((task, before, after))
        return plotting.adaptation_image(
            task.query_x[:, 0],
            task.query_y[:, 0],
            task.support_x[:, 0],
            task.support_y[:, 0],
            before[:, 0],
            after[:, 0],
            self.train_steps,
        )
