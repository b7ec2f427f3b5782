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
        test: classes of meta-testing; in neither other part.
        validation: classes of in-training validation, in neither other part; None only
            for splits of runs made before every split had one (they can be meta-tested,
            not trained: `part("validation")` refuses, as no part stands in for another).
    """

    train: np.ndarray
    test: np.ndarray
    validation: np.ndarray | None = None

    def __post_init__(self):
        pairs = [("meta-train", self.train, "meta-test", self.test)]
        if self.validation is not None:
            pairs += [
                ("meta-train", self.train, "validation", self.validation),
                ("validation", self.validation, "meta-test", self.test),
            ]
        for a, x, b, y in pairs:
            if np.intersect1d(x, y).size:
                raise ValueError(f"{a} and {b} classes overlap")

    def part(self, name: str) -> np.ndarray:
        """The classes of one of PARTS.

        Raises:
            ValueError: for any other name (no code path falls back to the test classes).
            UserInputError: for "validation" of a split without validation classes.
        """
        if name not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {name!r}")
        if name == "validation" and self.validation is None:
            raise UserInputError(
                "this class split has no validation classes, and validating on the meta-test "
                "classes would leak them; give the split validation classes (e.g. "
                "--config.omniglot.num_validation_alphabets=1)"
            )
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]


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
    back to validate), the rest meta-testing. With `num_validation` 0 the split has no
    validation part, so it cannot be trained on (only runs made so can be meta-tested).

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
    dataset: Omniglot,
    held_out: tuple[str, ...] = (),
    num_held_out: int = 0,
    seed: int = 0,
    validation: tuple[str, ...] = (),
    num_validation: int = 0,
) -> ClassSplit:
    """Whole alphabets held out for meta-testing, and others held out for validation.

    The meta-test alphabets are the ones named in `held_out`, else `num_held_out` drawn by
    `seed`; the validation alphabets likewise (`validation`, else `num_validation` drawn
    by `seed` from the rest). Meta-training gets every other alphabet. With neither
    validation argument the split has no validation part (runs made before it had one).

    Raises:
        UserInputError: for unknown alphabet names, an alphabet named for both parts, or a
            split that leaves meta-training empty.
    """
    alphabets = dataset.alphabets
    test = _choose(alphabets, held_out, num_held_out, seed, (), "held-out")
    if not test:
        raise UserInputError(
            f"the alphabet split must hold out at least one of the {len(alphabets)} "
            f"alphabets for meta-testing; pass --config.omniglot.held_out=... or "
            f"--config.omniglot.num_held_out=N"
        )
    both = sorted(set(validation) & test)
    if both:
        raise UserInputError(
            f"alphabet(s) {both} are named for both validation and meta-testing; name each "
            f"in one of --config.omniglot.validation_alphabets and --config.omniglot.held_out"
        )
    val = _choose(alphabets, validation, num_validation, seed, test, "validation")
    if len(test) + len(val) >= len(alphabets):
        raise UserInputError(
            f"the alphabet split holds out {len(test)} alphabet(s) for meta-testing and "
            f"{len(val)} for validation, leaving none of the {len(alphabets)} to meta-train "
            f"on; hold out fewer"
        )
    part = np.array([a for a, _ in dataset.classes])
    is_test, is_val = np.isin(part, sorted(test)), np.isin(part, sorted(val))
    return ClassSplit(
        train=np.flatnonzero(~is_test & ~is_val),
        test=np.flatnonzero(is_test),
        validation=np.flatnonzero(is_val) if val else None,
    )


def _choose(
    alphabets: tuple[str, ...],
    named: tuple[str, ...],
    count: int,
    seed: int,
    taken: set[str],
    what: str,
) -> set[str]:
    """The alphabets `named`, else `count` of those not `taken`, drawn by `seed`."""
    if named:
        unknown = sorted(set(named) - set(alphabets))
        if unknown:
            raise UserInputError(
                f"unknown alphabet(s) {unknown} in the {what} list; the data has {list(alphabets)}"
            )
        return set(named)
    free = [a for a in alphabets if a not in taken]
    # The meta-test draw is the permutation the split has always used, so the test
    # alphabets of a seed do not depend on whether validation alphabets are drawn too.
    order = np.random.default_rng(seed).permutation(len(free))
    return {free[i] for i in order[:count]}
