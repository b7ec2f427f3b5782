"""Omniglot N-way K-shot classification: the family, sampled on the host from real images."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from maml_dist import models


class OmniglotFamily:
    """Few-shot character classification (Finn et al. 2017, section 5.2).

    Episodes come from `maml_dist.data.episodes.EpisodeSampler` on the host; this class
    holds what the device needs: the network, the loss and the metric.
    """

    name = "omniglot"
    metric = "accuracy"

    def __init__(self, config: ml_collections.ConfigDict):
        """Reads `config.ways`, `config.omniglot.image_size` and `config.model`."""
        self.ways = config.ways
        self.image_size = config.omniglot.image_size
        self.filters = config.model.filters
        self.blocks = config.model.blocks
        self.conv_impl = config.model.conv_impl

    def make_model(self) -> models.ConvNet:
        """The 4-block stride-2 conv net with an N-way linear head."""
        return models.ConvNet(
            num_classes=self.ways,
            filters=self.filters,
            blocks=self.blocks,
            conv_impl=self.conv_impl,
        )

    def loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
        """Mean softmax cross-entropy."""
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def score(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
        """Accuracy: the reported metric (the loss is what is differentiated)."""
        return jnp.mean(jnp.argmax(logits, -1) == labels)

    def example_input(self) -> jax.Array:
        """One blank image."""
        return jnp.zeros((1, self.image_size, self.image_size, 1), jnp.uint8)
