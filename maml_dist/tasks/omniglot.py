"""Omniglot N-way K-shot classification: the family, sampled on the host from real images."""

from __future__ import annotations

import functools

import ml_collections

from maml_dist.data import omniglot, splits
from maml_dist.errors import UserInputError
from maml_dist.tasks.classification import ImageClassification, check_image_size

SPLITS = ("standard", "alphabet")


class OmniglotFamily(ImageClassification):
    """Few-shot character classification (Finn et al. 2017, section 5.2).

    Episodes are drawn on the host by `maml_dist.data.episodes.EpisodeSampler` (numpy,
    from images held in memory); the device gets the network, the loss and the metric.
    Reading the images is deferred to the first `episodes` call, so building the family
    (as the input checks do) costs nothing.
    """

    name = "omniglot"
    ink = True  # 255 = ink, 0 = page

    def __init__(self, config: ml_collections.ConfigDict):
        """Reads `config.ways`, `config.data_dir`, `config.omniglot` and `config.model`."""
        self.data_dir = config.data_dir
        self.options = config.omniglot
        self.rotations = config.omniglot.rotations
        if self.options.split not in SPLITS:
            raise UserInputError(
                f"config.omniglot.split must be one of {', '.join(map(repr, SPLITS))}, got "
                f"{self.options.split!r}"
            )
        check_image_size(config.omniglot.image_size, "omniglot.image_size")
        super().__init__(config, config.omniglot.image_size, channels=1)
        if not self.data_dir:
            raise UserInputError(
                "config.data_dir is not set; pass --config.data_dir=FOLDER, the folder "
                f"holding the Omniglot zips or their extracted folders ({omniglot.DOWNLOAD_HINT})"
            )
        # Only looks the sets up (no reading), so a wrong folder fails before any compile.
        self.sources = omniglot.find_sources(self.data_dir, tuple(self.options.sets))

    @functools.cached_property
    def data(self) -> tuple[omniglot.Omniglot, splits.ClassSplit]:
        """The images (read once, through the cache) and the class split."""
        o = self.options
        cache_dir = o.cache_dir or omniglot.default_cache_dir()
        dataset = omniglot.load(self.sources, self.image_size, cache_dir)
        if o.split == "standard":
            split = splits.standard_split(dataset, o.num_train, o.split_seed, o.num_validation)
        else:
            split = splits.alphabet_split(
                dataset,
                tuple(o.held_out),
                o.num_held_out,
                o.split_seed,
                # Runs made before the alphabet split had validation alphabets lack these.
                tuple(o.get("validation_alphabets", ())),
                o.get("num_validation_alphabets", 0),
            )
        return dataset, split

    def class_names(self) -> tuple[str, ...]:
        """Every class as "Alphabet/character" (the Omniglot folder names)."""
        return tuple(f"{a}/{c}" for a, c in self.data[0].classes)
