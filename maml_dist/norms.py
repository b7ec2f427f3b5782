"""Batch-norm layers of the conv nets: transductive, per-step running, per-step support.

Each normalises over every axis but the channels, in float32 for narrower inputs, and
keeps its scale and offset (and running statistics) as parameters the inner loop sees.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# Running statistics are leaves of `params` with these names (see StepNorm).
RUNNING_STATS = ("running_mean", "running_var")
# The flax collection a StepNorm in training mode sows its batch statistics into.
STEP_STATS = "step_stats"


def _normalise(x, mean, var, scale, offset, epsilon):
    """Batch norm's affine normalisation, in x's dtype (float32 or wider)."""
    return (x - mean) * jax.lax.rsqrt(var + epsilon) * scale + offset


class BatchStatNorm(nn.Module):
    """Batch norm that always normalises with the current batch's statistics.

    This is MAML's (transductive) batch norm: every call, support or query set, uses its
    own mean and variance over (batch, height, width); only the scale and offset are
    parameters, adapted in the inner loop like the weights. No running averages are kept,
    so the module stays a pure function of its parameters.

    Inputs narrower than float32 (bfloat16) are normalised in float32 and the result cast
    back: a mean rounded to bfloat16's 8 significant bits is off by up to 2^-9 of itself,
    which can be a large part of a standard deviation, and x - mean would cancel digits.
    """

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalises (..., H, W, C) over all but the channel axis; returns x's dtype."""
        dtype = x.dtype
        x = x.astype(jnp.promote_types(dtype, jnp.float32))  # a no-op for float32
        axes = tuple(range(x.ndim - 1))
        mean = x.mean(axes)
        var = jnp.mean(jnp.square(x - mean), axes)
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        offset = self.param("offset", nn.initializers.zeros, (x.shape[-1],))
        return _normalise(x, mean, var, scale, offset, self.epsilon).astype(dtype)


class StepNorm(nn.Module):
    """Batch norm with a scale, offset and running statistics per inner step (MAML++).

    `step` is the number of inner updates the parameters being evaluated have had; steps
    past the last slot use the last one. A support set (`train=True`) is normalised with
    its own batch statistics, which the layer sows into the STEP_STATS collection for the
    meta-optimiser to average into the running ones; anything else (query sets,
    predictions) is normalised with the running statistics of its step, so each image is
    normalised independently of the others. Meta-training and meta-test do the same, so
    the inner loop meta-learned is the one run at meta-test.

    The running statistics are `params` leaves (RUNNING_STATS), not a separate flax
    collection, so every function of the parameters (inner steps, evaluation) sees them.
    They pass through `stop_gradient`: an inner SGD step leaves them exactly unchanged, and
    the meta-optimiser replaces their (zero) gradient with an exponential moving average
    (`maml_dist.state.running_average`).

    Like BatchStatNorm, it normalises inputs narrower than float32 in float32 (the sown
    statistics are float32) and returns the input's dtype.

    Attributes:
        slots: number of per-step slots (training inner steps + 1).
        epsilon: added to the variance.
    """

    slots: int
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, step, train: bool) -> jax.Array:
        """Normalises (..., H, W, C) over all but the channel axis with step `step`'s slot."""
        dtype = x.dtype
        x = x.astype(jnp.promote_types(dtype, jnp.float32))  # a no-op for float32
        shape = (self.slots, x.shape[-1])
        scale = self.param("scale", nn.initializers.ones, shape)
        offset = self.param("offset", nn.initializers.zeros, shape)
        running_mean = self.param(RUNNING_STATS[0], nn.initializers.zeros, shape)
        running_var = self.param(RUNNING_STATS[1], nn.initializers.ones, shape)
        slot = jnp.minimum(step, self.slots - 1)
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = x.mean(axes)
            var = jnp.mean(jnp.square(x - mean), axes)
            self.sow(STEP_STATS, "mean", jax.lax.stop_gradient(mean))
            self.sow(STEP_STATS, "var", jax.lax.stop_gradient(var))
        else:
            mean = jax.lax.stop_gradient(running_mean[slot])
            var = jax.lax.stop_gradient(running_var[slot])
        return _normalise(x, mean, var, scale[slot], offset[slot], self.epsilon).astype(dtype)


class SupportNorm(nn.Module):
    """Batch norm with a scale and offset per inner step and the support set's statistics.

    MetaBN (Bronskill et al. 2020, "TaskNorm"): every set is normalised with the batch
    statistics of the task's support set, computed at the same parameters; the support
    set itself therefore with its own. A query image's output depends on the support set
    and on that image only, not on the other queries, and no running averages are kept:
    the statistics are a differentiable function of the support set, as transductive
    batch norm's are of each set, so the meta-gradient flows through them.

    The caller passes the support rows first: `context` is their number (the statistics
    are taken over `x[:context]`), None for a batch that is all support set.

    Like BatchStatNorm, it normalises inputs narrower than float32 in float32 and returns
    the input's dtype.

    Attributes:
        slots: number of per-step slots (training inner steps + 1); steps past the last
            slot use the last one.
        epsilon: added to the variance.
    """

    slots: int
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, step, context: int | None = None) -> jax.Array:
        """Normalises (..., H, W, C) with the statistics of the first `context` rows."""
        dtype = x.dtype
        x = x.astype(jnp.promote_types(dtype, jnp.float32))  # a no-op for float32
        shape = (self.slots, x.shape[-1])
        scale = self.param("scale", nn.initializers.ones, shape)
        offset = self.param("offset", nn.initializers.zeros, shape)
        slot = jnp.minimum(step, self.slots - 1)
        support = x if context is None else x[:context]
        axes = tuple(range(x.ndim - 1))
        mean = support.mean(axes)
        var = jnp.mean(jnp.square(support - mean), axes)
        return _normalise(x, mean, var, scale[slot], offset[slot], self.epsilon).astype(dtype)
