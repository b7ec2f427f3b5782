"""Meta-train / meta-test class splits of Omniglot (disjoint by construction)."""

from __future__ import annotations

import dataclasses

import numpy as np

from maml_dist.checks import UserInputError
from maml_dist.data.omniglot import Omniglot


@dataclasses.dataclass(frozen=True)
class ClassSplit:
    """Base class indices (into `Omniglot.classes`) for meta-training and meta-testing."""

    train: np.ndarray
    test: np.ndarray

    def __post_init__(self):
        if np.intersect1d(self.train, self.test).size:
            raise ValueError("meta-train and meta-test classes overlap")


def standard_split(dataset: Omniglot, num_train: int = 1200, seed: int = 1) -> ClassSplit:
    """The MAML code's split: shuffle all characters with `seed`, first `num_train` train.

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
    return ClassSplit(train=np.sort(order[:num_train]), test=np.sort(order[num_train:]))


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
