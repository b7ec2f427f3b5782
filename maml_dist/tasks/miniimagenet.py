"""mini-ImageNet N-way K-shot classification (Finn et al. 2017, section 5.2)."""

from __future__ import annotations

import functools

import ml_collections

from maml_dist.data import images, miniimagenet, omniglot, splits
from maml_dist.errors import UserInputError
from maml_dist.tasks.classification import ImageClassification, check_image_size


class MiniImageNetFamily(ImageClassification):
    """Few-shot classification of 84x84 RGB photos on Ravi & Larochelle's class split.

    Episodes of the meta-training, validation and meta-test parts come from the classes
    of train.csv, val.csv and test.csv (`maml_dist.data.miniimagenet`); the images are
    decoded once into a cache.
    """

    name = "miniimagenet"

    def __init__(self, config: ml_collections.ConfigDict):
        """Reads `config.data_dir`, `config.image_size`, `config.miniimagenet`, `config.model`.

        Raises:
            UserInputError: for a missing data_dir, or a folder without `images/` and the
                three CSV files (looked up, not read).
        """
        self.data_dir = config.data_dir
        self.options = config.miniimagenet
        check_image_size(config.image_size)
        super().__init__(config, config.image_size, channels=3)
        if not self.data_dir:
            raise UserInputError(
                "config.data_dir is not set; pass --config.data_dir=ROOT, the folder holding "
                f"images/ and train.csv, val.csv, test.csv ({miniimagenet.SOURCE_HINT})"
            )
        miniimagenet.find_sources(self.data_dir)

    @functools.cached_property
    def data(self) -> tuple[images.ImageSet, splits.ClassSplit]:
        """The images (decoded once, through the cache) and the CSVs' class split."""
        paths, labels, classes, split, digest = miniimagenet.read_split(self.data_dir)
        self.check_split(
            split, f"the CSV files in {self.data_dir!r}", "lower --config.ways or add classes"
        )
        cache_dir = self.options.cache_dir or omniglot.default_cache_dir()
        dataset = miniimagenet.decode(
            self.data_dir, paths, labels, classes, digest, self.image_size, cache_dir
        )
        return dataset, split

    def class_names(self) -> tuple[str, ...]:
        """The classes' WordNet ids."""
        return self.data[0].classes
