"""Networks that are meta-learned (flax.linen)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax


class MLP(nn.Module):
    """Fully connected ReLU network; the sinusoid regressor of Finn et al. 2017.

    Attributes:
        hidden_sizes: widths of the hidden layers (the paper uses (40, 40)).
        out_features: width of the output layer (1 for regression).
        init_stddev: if > 0, weights start from a truncated normal with this standard
            deviation and biases at zero, as in the original MAML code (0.01); if 0,
            flax's LeCun-normal default. With LeCun init the network's first inner step at
            alpha=0.01 overshoots (query loss rises ~5x on a fresh net); the small init does not.
    """

    hidden_sizes: Sequence[int]
    out_features: int
    init_stddev: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps inputs of shape (..., in) to outputs of shape (..., out_features)."""
        kwargs = {}
        if self.init_stddev > 0:
            kwargs["kernel_init"] = nn.initializers.truncated_normal(self.init_stddev)
        for width in self.hidden_sizes:
            x = nn.relu(nn.Dense(width, **kwargs)(x))
        return nn.Dense(self.out_features, **kwargs)(x)
