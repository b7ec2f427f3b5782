"""Omniglot N-way K-shot classification: the family, sampled on the host from real images."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax

from maml_dist import models
from maml_dist.data import omniglot, splits
from maml_dist.data.episodes import EpisodeSampler
from maml_dist.errors import UserInputError

SPLITS = ("standard", "alphabet")
# Which classes each task stream draws from (streams of maml_dist.tasks.base).
PARTS = ("train", "validation", "test")


class OmniglotFamily:
    """Few-shot character classification (Finn et al. 2017, section 5.2).

    Episodes are drawn on the host by `maml_dist.data.episodes.EpisodeSampler` (numpy,
    from images held in memory); the device gets the network, the loss and the metric.
    Reading the images is deferred to the first `episodes` call, so building the family
    (as the input checks do) costs nothing.
    """

    name = "omniglot"
    metric = "accuracy"
    kind = "classification"
    host_sampled = True

    def __init__(self, config: ml_collections.ConfigDict):
        """Reads `config.ways`, `config.data_dir`, `config.omniglot` and `config.model`."""
        self.ways = config.ways
        self.data_dir = config.data_dir
        self.options = config.omniglot
        self.image_size = config.omniglot.image_size
        self.filters = config.model.filters
        self.blocks = config.model.blocks
        self.conv_impl = config.model.conv_impl
        # Runs written before batch-norm modes existed have no such field.
        self.bn_mode = models.resolve_bn_mode(
            config.model.get("bn_mode", "transductive"), config.algorithm
        )
        self.bn_slots = config.inner_steps + 1
        if self.options.split not in SPLITS:
            raise UserInputError(
                f"config.omniglot.split must be one of {', '.join(map(repr, SPLITS))}, got "
                f"{self.options.split!r}"
            )
        if self.conv_impl not in models.CONV_IMPLS:
            raise UserInputError(
                f"config.model.conv_impl must be one of {', '.join(map(repr, models.CONV_IMPLS))}"
                f", got {self.conv_impl!r}"
            )
        if self.bn_mode not in models.BN_MODES:
            raise UserInputError(
                f"config.model.bn_mode must be 'auto' or one of "
                f"{', '.join(map(repr, models.BN_MODES))}, got {self.bn_mode!r}"
            )
        if not isinstance(self.ways, int) or self.ways < 2:
            raise UserInputError(f"config.ways must be an integer >= 2, got {self.ways!r}")
        if not self.data_dir:
            raise UserInputError(
                "config.data_dir is not set; pass --config.data_dir=FOLDER, the folder "
                f"holding the Omniglot zips or their extracted folders ({omniglot.DOWNLOAD_HINT})"
            )
        # Only looks the sets up (no reading), so a wrong folder fails before any compile.
        self.sources = omniglot.find_sources(self.data_dir, tuple(self.options.sets))

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> OmniglotFamily:
        """The family a config describes (see `__init__`)."""
        return cls(config)

    @functools.cached_property
    def data(self) -> tuple[omniglot.Omniglot, splits.ClassSplit]:
        """The images (read once, through the cache) and the class split."""
        o = self.options
        cache_dir = o.cache_dir or omniglot.default_cache_dir()
        dataset = omniglot.load(self.sources, self.image_size, cache_dir)
        if o.split == "standard":
            split = splits.standard_split(dataset, o.num_train, o.split_seed, o.num_validation)
        else:
            split = splits.alphabet_split(dataset, tuple(o.held_out), o.num_held_out, o.split_seed)
        return dataset, split

    def episodes(self, part: str, shots: int, queries: int) -> EpisodeSampler:
        """A sampler of `self.ways`-way episodes from one part ("train", ...) of the split."""
        dataset, split = self.data
        classes = {"train": split.train, "validation": split.validation_classes}.get(
            part, split.test
        )
        return EpisodeSampler(dataset, classes, self.ways, shots, queries, self.options.rotations)

    def make_model(self) -> models.ConvNet:
        """The 4-block stride-2 conv net with an N-way linear head."""
        return models.ConvNet(
            num_classes=self.ways,
            filters=self.filters,
            blocks=self.blocks,
            conv_impl=models.resolve_conv_impl(self.conv_impl),
            bn_mode=self.bn_mode,
            bn_slots=self.bn_slots,
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
