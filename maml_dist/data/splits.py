"""Meta-train / validation / meta-test class splits (disjoint by construction)."""

from __future__ import annotations

import dataclasses

import numpy as np

from maml_dist.data.omniglot import Omniglot
from maml_dist.errors import UserInputError


@dataclasses.dataclass(frozen=True)
class ClassSplit:
    """Base class indices (into a data set's classes) for meta-training, validation, testing.

    Attributes:
        train: classes meta-training samples from.
        test: classes of meta-testing; never in `train`.
        validation: classes of in-training validation; None means the test classes (on a
            different key stream, so not the meta-test episodes). Validation is only
            monitored, never used to pick checkpoints, so that shares no information with
            meta-testing.
    """

    train: np.ndarray
    test: np.ndarray
    validation: np.ndarray | None = None

    def __post_init__(self):
        if np.intersect1d(self.train, self.test).size:
            raise ValueError("meta-train and meta-test classes overlap")
        if self.validation is not None and np.intersect1d(self.train, self.validation).size:
            raise ValueError("meta-train and validation classes overlap")

    @property
    def validation_classes(self) -> np.ndarray:
        """The classes validation episodes are drawn from."""
        return self.test if self.validation is None else self.validation

    def part(self, name: str) -> np.ndarray:
        """The classes of one of PARTS.

        Raises:
            ValueError: for any other name (no code path falls back to the test classes).
        """
        if name not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {name!r}")
        return {"train": self.train, "validation": self.validation_classes, "test": self.test}[name]


# What a task family's `episodes(part, ...)` may ask for.
PARTS = ("train", "validation", "test")
# The default split of a data set without one of its own (image folders): of the classes,
# shuffled by a seed, 60% meta-train, 20% validation, 20% meta-test.
FRACTIONS = (0.6, 0.2, 0.2)


def seeded_split(num_classes: int, seed: int = 0) -> ClassSplit:
    """Splits classes 0..num_classes-1 by FRACTIONS after shuffling them with `seed`.

    Validation and meta-test get `round(0.2 * num_classes)` classes each and meta-training
    the rest, so every part has at least one class from 5 classes on; each part is sorted.
    """
    order = np.random.default_rng(seed).permutation(num_classes)
    held = round(FRACTIONS[2] * num_classes)
    val = round(FRACTIONS[1] * num_classes)
    train = num_classes - held - val
    return ClassSplit(
        train=np.sort(order[:train]),
        validation=np.sort(order[train : train + val]),
        test=np.sort(order[train + val :]),
    )


def standard_split(
    dataset: Omniglot, num_train: int = 1200, seed: int = 1, num_validation: int = 100
) -> ClassSplit:
    """The MAML code's split of all characters, shuffled with `seed`.

    The first `num_train` are meta-training (of which the last `num_validation` are held
    back to validate), the rest meta-testing.

    Raises:
        UserInputError: if there are not more than `num_train` characters (e.g. on the
            minimal splits, which need the alphabet split).
    """
    n = len(dataset.classes)
    if n <= num_train:
        raise UserInputError(
            f"the standard split needs more than {num_train} characters, the data has {n}; "
            f"use the alphabet split (--config.omniglot.split=alphabet) or the full data set"
        )
    order = np.random.default_rng(seed).permutation(n)
    fit = num_train - num_validation
    return ClassSplit(
        train=np.sort(order[:fit]),
        test=np.sort(order[num_train:]),
        validation=np.sort(order[fit:num_train]) if num_validation else None,
    )


def alphabet_split(
    dataset: Omniglot, held_out: tuple[str, ...] = (), num_held_out: int = 0, seed: int = 0
) -> ClassSplit:
    """Whole alphabets held out for meta-testing: the ones named, else `num_held_out` by seed.

    Raises:
        UserInputError: for unknown alphabet names or a split that leaves either side empty.
    """
    alphabets = dataset.alphabets
    if held_out:
        unknown = sorted(set(held_out) - set(alphabets))
        if unknown:
            raise UserInputError(
                f"unknown alphabet(s) {unknown} in the held-out list; the data has "
                f"{list(alphabets)}"
            )
        chosen = set(held_out)
    else:
        order = np.random.default_rng(seed).permutation(len(alphabets))
        chosen = {alphabets[i] for i in order[:num_held_out]}
    if not chosen or len(chosen) == len(alphabets):
        raise UserInputError(
            f"the alphabet split must hold out at least one and at most {len(alphabets) - 1} "
            f"of the {len(alphabets)} alphabets, not {len(chosen)}"
        )
    is_test = np.array([a in chosen for a, _ in dataset.classes])
    return ClassSplit(train=np.flatnonzero(~is_test), test=np.flatnonzero(is_test))
