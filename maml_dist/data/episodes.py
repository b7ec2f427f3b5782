"""N-way K-shot episodes, sampled on the host as a pure function of (seed, stream, step, index).

Like the sinusoid tasks, an episode depends only on its global task index, so a process
builds just its own slice of the meta-batch and the result does not depend on the number
of devices or processes.
"""

from __future__ import annotations

import numpy as np

from maml_dist.data.omniglot import Omniglot
from maml_dist.errors import UserInputError
from maml_dist.types import TaskBatch


class EpisodeSampler:
    """Draws episodes from a set of base classes, optionally with rotated copies as classes.

    With `rotations`, each base class c gives four classes (c, 0/90/180/270 degrees), the
    protocol of Vinyals et al. and the MAML code; a split is made on base classes first,
    so the rotations of a meta-test character never appear in meta-training.
    """

    def __init__(
        self,
        dataset: Omniglot,
        classes: np.ndarray,
        ways: int,
        shots: int,
        queries: int,
        rotations: bool,
    ):
        """Indexes the images of `classes` (base class indices into `dataset.classes`)."""
        self.images = dataset.images
        self.by_class = [np.flatnonzero(dataset.labels == c) for c in classes]
        self.turns = 4 if rotations else 1
        self.num_classes = len(classes) * self.turns
        self.ways, self.shots, self.queries = ways, shots, queries
        if ways > self.num_classes:
            raise UserInputError(
                f"{ways}-way episodes need at least {ways} classes, the split has "
                f"{self.num_classes}; lower --config.ways or use more data"
            )
        fewest = min(len(ix) for ix in self.by_class)
        if shots + queries > fewest:
            raise UserInputError(
                f"shots + queries = {shots + queries} images per class, but a class has only "
                f"{fewest}; lower them (training: --config.shots / --config.num_query; "
                f"maml_dist.evaluate: --shots / --num_query)"
            )

    def episode(self, seed: int, stream: int, step: int, index: int) -> TaskBatch:
        """One episode: support (ways*shots, H, W, 1) uint8 and int32 labels, query likewise.

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
            support_x=np.concatenate(support)[..., None],
            support_y=np.repeat(labels, self.shots),
            query_x=np.concatenate(query)[..., None],
            query_y=np.repeat(labels, self.queries),
        )

    def batch(self, seed: int, stream: int, step: int, indices) -> TaskBatch:
        """Episodes of the given global task indices, stacked on a leading axis."""
        episodes = [self.episode(seed, stream, step, int(i)) for i in indices]
        return TaskBatch(
            *(np.stack([getattr(e, f) for e in episodes]) for f in TaskBatch.__dataclass_fields__)
        )
