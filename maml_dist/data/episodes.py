"""N-way K-shot episodes, sampled on the host as a pure function of (seed, stream, step, index).

Like the sinusoid tasks, an episode depends only on its global task index, so a process
builds just its own slice of the meta-batch and the result does not depend on the number
of devices or processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import numpy as np

from maml_dist.errors import UserInputError
from maml_dist.types import TaskBatch


class LabelledImages(Protocol):
    """What the sampler reads: Omniglot's images, or any decoded image set.

    Attributes:
        images: (N, H, W) or (N, H, W, C) uint8, H == W; may be memory-mapped (only the
            drawn rows are read).
        labels: (N,) int class index of each image.
    """

    images: np.ndarray
    labels: np.ndarray


class _MappedFile(NamedTuple):
    """Where a memory-mapped array lives, to map it again in another process."""

    filename: str
    dtype: str
    offset: int
    shape: tuple


class EpisodeSampler:
    """Draws episodes from a set of base classes, optionally with rotated copies as classes.

    With `rotations`, each base class c gives four classes (c, 0/90/180/270 degrees), the
    protocol of Vinyals et al. and the MAML code; a split is made on base classes first,
    so the rotations of a meta-test character never appear in meta-training.
    """

    def __init__(
        self,
        dataset: LabelledImages,
        classes: np.ndarray,
        ways: int,
        shots: int,
        queries: int,
        rotations: bool,
        class_names: Sequence[str] | None = None,
    ):
        """Indexes the images of `classes` (base class indices into the dataset's labels).

        Args:
            dataset: the images and labels; (N, H, W) images get a channel axis of 1.
            classes: the base classes episodes draw from (one part of a split).
            ways: N, classes per episode.
            shots: K, support images per class.
            queries: query images per class.
            rotations: add 90/180/270-degree rotations of every class as classes.
            class_names: names of all the dataset's classes, to name a class with too few
                images in the error (None: the error says "a class").

        Raises:
            UserInputError: if there are fewer than `ways` classes, or a class has fewer
                than `shots + queries` images.
        """
        # A view, not a copy: a memory-mapped set stays on disk until episodes read it.
        images = dataset.images
        self.images = images if images.ndim == 4 else images[..., None]
        self.by_class = [np.flatnonzero(dataset.labels == c) for c in classes]
        self.turns = 4 if rotations else 1
        self.num_classes = len(classes) * self.turns
        self.ways, self.shots, self.queries = ways, shots, queries
        if ways > self.num_classes:
            raise UserInputError(
                f"{ways}-way episodes need at least {ways} classes, the split has "
                f"{self.num_classes}; lower --config.ways or use more data"
            )
        sizes = [len(ix) for ix in self.by_class]
        fewest = min(sizes)
        if shots + queries > fewest:
            which = "a class"
            if class_names is not None:
                which = f"class {class_names[classes[sizes.index(fewest)]]!r}"
            raise UserInputError(
                f"shots + queries = {shots + queries} images per class, but {which} has only "
                f"{fewest}; lower them (training: --config.shots / --config.num_query; "
                f"maml_dist.evaluate: --shots / --num_query)"
            )

    def __getstate__(self) -> dict:
        """What a feed worker process receives: a memory-mapped set by its file, not its bytes.

        A contiguous memory-mapped image set (the decoded-image cache) would otherwise be
        read whole and copied into every worker.
        """
        state = self.__dict__.copy()
        images = state["images"]
        if isinstance(images, np.memmap) and images.filename and images.flags.c_contiguous:
            state["images"] = _MappedFile(
                images.filename, images.dtype.str, images.offset, images.shape
            )
        return state

    def __setstate__(self, state: dict) -> None:
        images = state["images"]
        if isinstance(images, _MappedFile):
            state["images"] = np.memmap(
                images.filename, np.dtype(images.dtype), "r", images.offset, images.shape
            )
        self.__dict__.update(state)

    def episode(self, seed: int, stream: int, step: int, index: int) -> TaskBatch:
        """One episode: support (ways*shots, H, W, C) uint8 and int32 labels, query likewise.

        Labels are a fresh permutation per episode: the i-th drawn class gets label i.
        """
        rng = np.random.default_rng([seed, stream, step, index])
        chosen = rng.choice(self.num_classes, self.ways, replace=False)
        support, query = [], []
        for c in chosen:
            base, turn = divmod(int(c), self.turns)
            picks = rng.choice(self.by_class[base], self.shots + self.queries, replace=False)
            images = np.rot90(self.images[picks], k=turn, axes=(1, 2))
            support.append(images[: self.shots])
            query.append(images[self.shots :])
        labels = np.arange(self.ways, dtype=np.int32)
        return TaskBatch(
            support_x=np.concatenate(support),
            support_y=np.repeat(labels, self.shots),
            query_x=np.concatenate(query),
            query_y=np.repeat(labels, self.queries),
        )

    def batch(self, seed: int, stream: int, step: int, indices) -> TaskBatch:
        """Episodes of the given global task indices, stacked on a leading axis."""
        episodes = [self.episode(seed, stream, step, int(i)) for i in indices]
        return TaskBatch(
            *(np.stack([getattr(e, f) for e in episodes]) for f in TaskBatch.__dataclass_fields__)
        )
