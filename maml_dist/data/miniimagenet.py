"""Reader of mini-ImageNet in Ravi & Larochelle's layout, with its standard class split.

Layout: `ROOT/images/<file>.jpg` (84x84 RGB) and `ROOT/train.csv`, `val.csv`, `test.csv`,
each a header line `filename,label` then one `<file>.jpg,<WordNet id>` row per image: 64
meta-training, 16 validation and 20 meta-test classes of 600 images each. The images are
decoded once into the cache of `maml_dist.data.images`, keyed by the CSVs' contents and
the images' names, sizes and modification times.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from maml_dist.data import images as images_lib
from maml_dist.data.splits import ClassSplit
from maml_dist.errors import UserInputError

# The split file of each part (the names of Ravi & Larochelle's repository).
CSV_FILES = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}
HEADER = "filename,label"
SOURCE_HINT = (
    "train.csv, val.csv and test.csv are the standard split of Ravi & Larochelle "
    "(https://github.com/twitter/meta-learning-lstm, folder data/miniImagenet), and the "
    "images come from ImageNet (ILSVRC-2012), resized to 84x84 and named as the CSVs list "
    "them in ROOT/images/; nothing is downloaded at run time"
)


def find_sources(root: str) -> None:
    """Checks that `root` has `images/` and the three CSV files (without reading them).

    Raises:
        UserInputError: naming what is missing and where the data comes from.
    """
    if not os.path.isdir(root):
        raise UserInputError(f"mini-ImageNet folder {root!r} does not exist; {SOURCE_HINT}")
    missing = [
        os.path.join(root, name)
        for name in ("images", *CSV_FILES.values())
        if not os.path.exists(os.path.join(root, name))
    ]
    if missing:
        raise UserInputError(f"mini-ImageNet: {missing[0]!r} is missing; {SOURCE_HINT}")


def read_csv(path: str) -> list[tuple[str, str, int]]:
    """The (file name, label, line number) rows of one split file.

    Raises:
        UserInputError: naming the file and line of a bad header or row.
    """
    with open(path, newline="") as f:
        lines = f.read().splitlines()
    if not lines or lines[0].strip() != HEADER:
        raise UserInputError(
            f"{path!r} line 1 must be the header {HEADER!r}, got {lines[0] if lines else ''!r}; "
            f"{SOURCE_HINT}"
        )
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.strip().split(",")
        if len(fields) != 2 or not all(fields):
            raise UserInputError(
                f"{path!r} line {number} is not '<file>.jpg,<label>': {line[:80]!r}"
            )
        rows.append((fields[0], fields[1], number))
    if not rows:
        raise UserInputError(f"{path!r} lists no images; {SOURCE_HINT}")
    return rows


def read_split(root: str) -> tuple[list[str], list[int], tuple[str, ...], ClassSplit, str]:
    """Reads the three CSV files: every image they list, its class, and the split.

    Returns:
        (image paths, class index of each, classes in CSV order (train, validation, test),
        the split, a checksum of the CSVs' rows).

    Raises:
        UserInputError: for a missing file or folder, a bad CSV line, a class in two
            parts, or an image a CSV lists but `images/` lacks.
    """
    find_sources(root)
    folder = os.path.join(root, "images")
    present = set(os.listdir(folder))
    classes: dict[str, int] = {}
    owner: dict[str, str] = {}
    parts: dict[str, list[int]] = {}
    paths, labels = [], []
    csv_hash = hashlib.sha256()
    for part, name in CSV_FILES.items():
        csv = os.path.join(root, name)
        rows = read_csv(csv)
        csv_hash.update(f"{name}\0{rows}".encode())
        first = len(classes)
        for filename, label, number in rows:
            if owner.setdefault(label, part) != part:
                raise UserInputError(
                    f"class {label!r} is in both {CSV_FILES[owner[label]]!r} and {name!r}; "
                    f"the parts must not share classes"
                )
            if filename not in present:
                raise UserInputError(
                    f"{csv!r} line {number} lists {filename!r}, but "
                    f"{os.path.join(folder, filename)!r} does not exist; {SOURCE_HINT}"
                )
            paths.append(os.path.join(folder, filename))
            labels.append(classes.setdefault(label, len(classes)))
        parts[part] = list(range(first, len(classes)))
    split = ClassSplit(
        train=np.asarray(parts["train"]),
        validation=np.asarray(parts["validation"]),
        test=np.asarray(parts["test"]),
    )
    return paths, labels, tuple(classes), split, csv_hash.hexdigest()


def load(
    root: str, size: int = 84, cache_dir: str | None = None
) -> tuple[images_lib.ImageSet, ClassSplit]:
    """Reads the three parts: every image they list, RGB, and the split they define.

    Args:
        root: the folder holding `images/` and the CSV files.
        size: side of the decoded images (84: the files' own size, kept as is).
        cache_dir: where decoded sets are kept (None: decode without caching).

    Returns:
        (the images of all parts, classes in CSV order: train, validation, test; the split).

    Raises:
        UserInputError: for what `read_split` refuses, or an unreadable image.
    """
    paths, labels, classes, split, digest = read_split(root)
    return decode(root, paths, labels, classes, digest, size, cache_dir), split


def decode(
    root: str,
    paths: list[str],
    labels: list[int],
    classes: tuple[str, ...],
    csv_digest: str,
    size: int,
    cache_dir: str | None,
) -> images_lib.ImageSet:
    """Decodes the images `read_split(root)` listed (or reads them from the cache)."""
    cache = None
    if cache_dir is not None:
        key = images_lib.fingerprint(root, paths, "miniimagenet", size, csv_digest)
        cache = (cache_dir, key)
    return images_lib.load(paths, labels, classes, size, 3, cache)
