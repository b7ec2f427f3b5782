"""What every image classification family shares: the conv net, its loss, host episodes.

A family derives from `ImageClassification` and provides `data` (the decoded images and
the class split, read on first use) and its checks of its own config fields.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from maml_dist import models, recorded_split
from maml_dist.data import splits
from maml_dist.data.device_episodes import DeviceEpisodes
from maml_dist.data.episodes import EpisodeSampler
from maml_dist.errors import UserInputError

# The largest image side accepted: images are decoded before any compile, and a side of
# millions would exhaust memory there rather than fail in one line.
MAX_IMAGE_SIZE = 1024


def check_image_size(size, field: str = "image_size") -> None:
    """Checks that `config.<field>`, the side images are resized to, is in 1..MAX_IMAGE_SIZE.

    Raises:
        UserInputError: naming the field.
    """
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_IMAGE_SIZE:
        raise UserInputError(
            f"config.{field} must be set to the side images are resized to, from 1 to "
            f"{MAX_IMAGE_SIZE}, got {size!r}; pass e.g. --config.{field}=84"
        )


class ImageClassification:
    """N-way K-shot image classification with the MAML paper's conv nets.

    Episodes are drawn on the host by `maml_dist.data.episodes.EpisodeSampler` (numpy,
    from decoded images); the device gets the network, the loss and the metric.
    Subclasses read their data lazily (the `data` property), so building a family costs
    nothing until the trainer's input checks build the samplers, before any compile.

    Attributes:
        image_size: side of the (square) images.
        channels: 1 (grayscale) or 3 (RGB).
        rotations: whether rotated copies of classes are classes too (Omniglot).
        ink: the images are ink on a blank page (255 = ink, Omniglot), drawn inverted.
    """

    metric = "accuracy"
    kind = "classification"
    host_sampled = True
    rotations = False
    ink = False

    def __init__(self, config: ml_collections.ConfigDict, image_size: int, channels: int):
        """Reads `config.ways`, `config.model` and the settings batch norm depends on.

        Raises:
            UserInputError: for an unknown conv implementation or batch-norm mode, ways
                below 2, or images too small for the network's pooling.
        """
        self.ways = config.ways
        self.image_size = image_size
        self.channels = channels
        self.filters = config.model.filters
        self.blocks = config.model.blocks
        self.conv_impl = config.model.conv_impl
        # Omniglot configs predate these fields: their net has stride-2 convs, no pooling.
        self.strides = config.model.get("strides", 2)
        self.pool = config.model.get("pool", False)
        # Runs written before batch-norm modes existed have no such field.
        # Runs saved before 0.5 have no mamlpp_bn_mode: their "auto" was running statistics.
        mamlpp_bn_mode = config.model.get("mamlpp_bn_mode", models.OLD_MAMLPP_BN_MODE)
        if mamlpp_bn_mode not in models.PER_STEP_BN_MODES:
            raise UserInputError(
                f"config.model.mamlpp_bn_mode must be one of "
                f"{', '.join(map(repr, models.PER_STEP_BN_MODES))}, got {mamlpp_bn_mode!r}"
            )
        self.bn_mode = models.resolve_bn_mode(
            config.model.get("bn_mode", "transductive"), config.algorithm, mamlpp_bn_mode
        )
        self.bn_slots = config.inner_steps + 1
        # Runs written before compute dtypes existed computed in float32.
        self.compute_dtype = config.model.get("compute_dtype", "float32")
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
        if self.pool and image_size < 2**self.blocks:
            raise UserInputError(
                f"image size {image_size} is too small for {self.blocks} max-pooled blocks "
                f"(each halves the side); use images of at least {2**self.blocks} pixels or "
                f"fewer --config.model.blocks"
            )

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict):
        """The family a config describes (see `__init__`)."""
        return cls(config)

    @property
    def data(self):
        """(the images, with `.images` and `.labels`; the `splits.ClassSplit`)."""
        raise NotImplementedError

    def check_split(self, split: splits.ClassSplit, where: str, fix: str) -> None:
        """Checks that every part of `split` has at least `ways` classes.

        Args:
            split: the class split.
            where: where the split comes from, for the message.
            fix: what the user can do, for the message.

        Raises:
            UserInputError: naming the first part that is too small.
        """
        for part in splits.PARTS:
            count = len(split.part(part))
            if count < self.ways:
                raise UserInputError(
                    f"{self.ways}-way episodes need {self.ways} classes in each part of the "
                    f"split, but its {part} part has {count} ({where}); {fix}"
                )

    def class_names(self) -> tuple[str, ...]:
        """Every class's name, by class index: in messages and in the recorded split."""
        raise NotImplementedError

    def split_record(self) -> dict:
        """The class split as `DIR/split.json` records it (`maml_dist.recorded_split`).

        Returns:
            `{"train": [...], "validation": [...], "test": [...], "checksum": "..."}`:
            class names per part (validation empty for splits of older runs without
            one), and a checksum of the decoded images and their labels, which does not
            depend on where the data lives or whether it is zipped.
        """
        dataset, split = self.data
        names = self.class_names()
        parts = {"train": split.train, "validation": split.validation, "test": split.test}
        record = {
            part: [] if classes is None else [names[i] for i in classes]
            for part, classes in parts.items()
        }
        record["checksum"] = recorded_split.checksum(dataset.images, dataset.labels, names)
        return record

    def episodes(self, part: str, shots: int, queries: int) -> EpisodeSampler:
        """A sampler of `self.ways`-way episodes from one part ("train", ...) of the split.

        Raises:
            ValueError: for a part other than "train", "validation" and "test".
        """
        dataset, split = self.data
        return EpisodeSampler(
            dataset,
            split.part(part),
            self.ways,
            shots,
            queries,
            self.rotations,
            self.class_names(),
        )

    def device_episodes(self, part: str, shots: int, queries: int) -> DeviceEpisodes:
        """Episodes of one part of the split drawn on the device (`data_placement="device"`).

        Reads nothing until its `tables` are asked for; they then check what `episodes`
        checks.
        """
        return DeviceEpisodes(
            self.ways,
            shots,
            queries,
            4 if self.rotations else 1,
            lambda: self.episodes(part, shots, queries),
        )

    def make_model(self) -> models.ConvNet:
        """The 4-block conv net of the config, with an N-way linear head."""
        return models.ConvNet(
            num_classes=self.ways,
            filters=self.filters,
            blocks=self.blocks,
            conv_impl=models.resolve_conv_impl(self.conv_impl),
            bn_mode=self.bn_mode,
            bn_slots=self.bn_slots,
            strides=self.strides,
            pool=self.pool,
            compute_dtype=self.compute_dtype,
        )

    def loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
        """Mean softmax cross-entropy."""
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def score(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
        """Accuracy: the reported metric (the loss is what is differentiated)."""
        return jnp.mean(jnp.argmax(logits, -1) == labels)

    def example_input(self) -> jax.Array:
        """One blank image."""
        return jnp.zeros((1, self.image_size, self.image_size, self.channels), jnp.uint8)
