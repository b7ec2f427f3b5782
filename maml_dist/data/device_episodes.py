"""N-way K-shot episodes sampled on the device, inside the scanned meta-step.

The host feed (`maml_dist.data.episodes.EpisodeSampler`) builds every episode in numpy
and copies it to the devices each chunk. Here the images of one part of the split are put
on every device once, as a table; each device then draws its own episodes with
`jax.random` from the task's key (`maml_dist.types.task_key`: seed, step and global task
index), so a step needs no host work and the meta-batch is the same on any number of
devices or processes. The draw is not the host sampler's (numpy's generator is another
one): a run keeps the placement it started with (`config.data_placement`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from maml_dist.data.episodes import EpisodeSampler
from maml_dist.types import TaskBatch


@struct.dataclass
class EpisodeTables:
    """What the devices hold to draw episodes: a pytree passed to the jitted step.

    Attributes:
        images: (M, H, W, C) uint8, the images of the part's classes only.
        members: (classes, most) int32 rows of `images` per base class, padded with 0
            past the class's count.
        counts: (classes,) int32 images per base class.
    """

    images: jax.Array
    members: jax.Array
    counts: jax.Array

    @property
    def nbytes(self) -> int:
        """Bytes the tables take on each device."""
        return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(self))


def episode_tables(sampler: EpisodeSampler) -> EpisodeTables:
    """The tables of a host sampler's classes (numpy; the caller puts them on devices).

    Each class's images become consecutive rows of a compact table of the part's images
    only; a memory-mapped set is read once, here.
    """
    counts = np.array([len(ix) for ix in sampler.by_class], np.int32)
    rows = np.concatenate(sampler.by_class)
    members = np.zeros((len(counts), counts.max()), np.int32)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for c, (start, count) in enumerate(zip(starts, counts, strict=True)):
        members[c, :count] = start + np.arange(count)
    return EpisodeTables(
        images=np.ascontiguousarray(sampler.images[rows]), members=members, counts=counts
    )


class DeviceEpisodes:
    """Draws episodes on the device from `EpisodeTables`, rotations optionally.

    The distribution of `EpisodeSampler`'s episodes: `ways` distinct classes (with
    rotations, each base class in four turns of 90 degrees is a class), `shots + queries`
    distinct images of each, labels 0..ways-1 in drawing order. Building it reads nothing;
    `tables` reads the data (and checks it, as `EpisodeSampler` does) on first use.
    """

    def __init__(self, ways: int, shots: int, queries: int, turns: int, sampler):
        """Keeps the episode shape; reads no data.

        Args:
            ways: N, classes per episode.
            shots: K, support images per class.
            queries: query images per class.
            turns: 4 with rotations, else 1.
            sampler: `() -> EpisodeSampler` of the part's classes, called by `tables`.
        """
        self.ways, self.shots, self.queries, self.turns = ways, shots, queries, turns
        self._sampler = sampler

    @functools.cached_property
    def tables(self) -> EpisodeTables:
        """The part's tables (numpy), built on first use.

        Raises:
            UserInputError: as `EpisodeSampler` (too few classes or images).
        """
        return episode_tables(self._sampler())

    def sample(self, key: jax.Array, tables: EpisodeTables) -> TaskBatch:
        """One episode from `key`: pure, traceable, shaped as `EpisodeSampler.episode`'s."""
        class_key, image_key = jax.random.split(key)
        num_classes = tables.counts.shape[0] * self.turns
        chosen = jax.random.choice(class_key, num_classes, (self.ways,), replace=False)
        base, turn = chosen // self.turns, chosen % self.turns
        per_class = self.shots + self.queries
        most = tables.members.shape[1]

        def pick(k, c):
            # A uniform subset of the class's images: the smallest of uniform scores, with
            # the padding past its count scored above every real image.
            scores = jax.random.uniform(k, (most,))
            scores = jnp.where(jnp.arange(most) < tables.counts[c], scores, 2.0)
            _, order = jax.lax.top_k(-scores, per_class)
            return tables.members[c, order]

        rows = jax.vmap(pick)(jax.random.split(image_key, self.ways), base)
        images = tables.images[rows]  # (ways, per_class, H, W, C)
        if self.turns > 1:
            images = jax.vmap(_rotate)(images, turn)
        labels = jnp.arange(self.ways, dtype=jnp.int32)
        tail = images.shape[2:]
        return TaskBatch(
            support_x=images[:, : self.shots].reshape(-1, *tail),
            support_y=jnp.repeat(labels, self.shots),
            query_x=images[:, self.shots :].reshape(-1, *tail),
            query_y=jnp.repeat(labels, self.queries),
        )


def _rotate(images: jax.Array, turn: jax.Array) -> jax.Array:
    """(n, H, W, C) images turned `turn` times by 90 degrees (as `np.rot90` on axes 1, 2)."""
    turns = [jnp.rot90(images, k, axes=(1, 2)) for k in range(4)]
    return jax.lax.switch(turn, [lambda t=t: t for t in turns])
