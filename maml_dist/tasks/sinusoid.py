"""Sinusoid regression tasks of Finn et al. (2017), section 5.1."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections

from maml_dist import models
from maml_dist.types import TaskBatch


class Sinusoid:
    """y = A sin(x + phi) with A ~ U[amp], phi ~ U[phase], x ~ U[x_range].

    The paper's ranges are A in [0.1, 5.0], phi in [0, pi], x in [-5, 5].
    """

    name = "sinusoid"
    metric = "mse"
    kind = "regression"
    host_sampled = False

    def __init__(
        self,
        amp_range: tuple[float, float] = (0.1, 5.0),
        phase_range: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
        hidden_sizes: tuple[int, ...] = (40, 40),
        init_stddev: float = 0.0,
        compute_dtype: str = "float32",
    ):
        """The paper's task distribution and regressor by default.

        Args:
            amp_range: amplitude range.
            phase_range: phase range.
            x_range: input range.
            hidden_sizes: the MLP's hidden widths.
            init_stddev: the MLP's `init_stddev` (0: flax's LeCun init).
            compute_dtype: the MLP's `compute_dtype` ("float32" or "bfloat16").
        """
        self.amp_range = tuple(amp_range)
        self.phase_range = tuple(phase_range)
        self.x_range = tuple(x_range)
        self.hidden_sizes = tuple(hidden_sizes)
        self.init_stddev = init_stddev
        self.compute_dtype = compute_dtype

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Sinusoid:
        """Reads `config.sinusoid` (ranges) and `config.model` (hidden sizes, init, dtype)."""
        return cls(
            amp_range=config.sinusoid.amp_range,
            phase_range=config.sinusoid.phase_range,
            x_range=config.sinusoid.x_range,
            hidden_sizes=config.model.hidden_sizes,
            init_stddev=config.model.init_stddev,
            # Runs written before compute dtypes existed computed in float32.
            compute_dtype=config.model.get("compute_dtype", "float32"),
        )

    def sample_function(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Samples the amplitude and phase of one task."""
        k_amp, k_phase = jax.random.split(key)
        amp = jax.random.uniform(k_amp, (), minval=self.amp_range[0], maxval=self.amp_range[1])
        phase = jax.random.uniform(
            k_phase, (), minval=self.phase_range[0], maxval=self.phase_range[1]
        )
        return amp, phase

    def sample(self, key: jax.Array, shots: int, num_query: int) -> TaskBatch:
        """Samples one task: `shots` support points and `num_query` query points."""
        k_fn, k_x = jax.random.split(key)
        amp, phase = self.sample_function(k_fn)
        x = jax.random.uniform(
            k_x, (shots + num_query, 1), minval=self.x_range[0], maxval=self.x_range[1]
        )
        y = amp * jnp.sin(x + phase)
        return TaskBatch(
            support_x=x[:shots], support_y=y[:shots], query_x=x[shots:], query_y=y[shots:]
        )

    def make_model(self) -> models.MLP:
        """The paper's regressor: 1 -> 40 -> 40 -> 1 with ReLU."""
        return models.MLP(
            hidden_sizes=self.hidden_sizes,
            out_features=1,
            init_stddev=self.init_stddev,
            compute_dtype=self.compute_dtype,
        )

    def loss(self, predictions: jax.Array, targets: jax.Array) -> jax.Array:
        """Mean (not summed) squared error."""
        return jnp.mean(jnp.square(predictions - targets))

    def score(self, predictions: jax.Array, targets: jax.Array) -> jax.Array:
        """The reported metric: the loss itself."""
        return self.loss(predictions, targets)

    def example_input(self) -> jax.Array:
        """One scalar input."""
        return jnp.zeros((1, 1), jnp.float32)
