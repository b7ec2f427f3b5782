"""Few-shot classification of your own images: a folder `ROOT/<class>/<image>`."""

from __future__ import annotations

import functools

import ml_collections

from maml_dist.data import image_folder, images, omniglot, splits
from maml_dist.errors import UserInputError
from maml_dist.tasks.classification import ImageClassification, check_image_size


class ImageFolderFamily(ImageClassification):
    """N-way K-shot episodes from any folder of class folders (`maml_dist.data.image_folder`).

    The classes are split into meta-training, validation and meta-test parts, 60/20/20
    after shuffling with `config.image_folder.split_seed`, or as a JSON split file lists
    them (`config.image_folder.split_file`). Images are resized to `config.image_size`,
    RGB or grayscale (`config.image_folder.channels`), and decoded once into a cache.
    """

    name = "image_folder"

    def __init__(self, config: ml_collections.ConfigDict):
        """Reads `config.data_dir`, `config.image_size`, `config.image_folder`, `config.model`.

        Raises:
            UserInputError: for a missing data_dir or image_size, or bad channels (the
                folder itself is read by `data`, before any compile).
        """
        self.data_dir = config.data_dir
        self.options = config.image_folder
        size, channels = config.image_size, config.image_folder.channels
        if not self.data_dir:
            raise UserInputError(
                "config.data_dir is not set; pass --config.data_dir=ROOT, a folder laid out "
                f"as {image_folder.LAYOUT}"
            )
        check_image_size(size)
        if channels not in images.MODES or isinstance(channels, bool):
            raise UserInputError(
                f"config.image_folder.channels must be 3 (RGB) or 1 (grayscale), got {channels!r}"
            )
        super().__init__(config, size, channels)

    @functools.cached_property
    def data(self) -> tuple[images.ImageSet, splits.ClassSplit]:
        """The images (decoded once, through the cache) and the class split.

        The split is made and checked from the folder listing, before any decoding.
        """
        o = self.options
        paths, labels, classes = image_folder.list_images(self.data_dir)
        if o.split_file:
            split = image_folder.read_split_file(o.split_file, classes)
            where = f"split file {o.split_file!r}"
        else:
            split = splits.seeded_split(len(classes), o.split_seed)
            where = f"the seeded 60/20/20 split of the {len(classes)} classes in {self.data_dir!r}"
        self.check_split(
            split,
            where,
            "lower --config.ways, add class folders, or list the parts in a split file "
            "(--config.image_folder.split_file=PATH)",
        )
        cache_dir = o.cache_dir or omniglot.default_cache_dir()
        dataset = image_folder.decode(
            self.data_dir, paths, labels, classes, self.image_size, self.channels, cache_dir
        )
        return dataset, split

    def class_names(self) -> tuple[str, ...]:
        """The class folder names."""
        return self.data[0].classes
