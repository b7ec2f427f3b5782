"""Reader of a folder of images by class, `ROOT/<class>/<image>`, and of its split file.

A class is a sub-folder of ROOT; its images are the files whose names end in .png, .jpg
or .jpeg (any case). Other files, and anything at ROOT itself (a README, a split file),
are not read; operating-system litter (.DS_Store, __MACOSX, ...) is skipped everywhere.
"""

from __future__ import annotations

import json
import os

import numpy as np

from maml_dist.data import images as images_lib
from maml_dist.data.omniglot import is_ignored
from maml_dist.data.splits import PARTS, ClassSplit
from maml_dist.errors import UserInputError

LAYOUT = "ROOT/<class>/<image>.png or .jpg"


def list_images(root: str) -> tuple[list[str], list[int], tuple[str, ...]]:
    """The image files of every class folder, in sorted order.

    Returns:
        (paths, the class index of each, class names = folder names, sorted).

    Raises:
        UserInputError: if `root` is not a folder, has no class folders, or holds an
            empty class folder or a folder inside a class folder.
    """
    if not os.path.isdir(root):
        raise UserInputError(
            f"image folder {root!r} does not exist; pass --config.data_dir=ROOT, a folder "
            f"laid out as {LAYOUT}"
        )
    classes = sorted(
        name
        for name in os.listdir(root)
        if not is_ignored(name) and os.path.isdir(os.path.join(root, name))
    )
    if not classes:
        raise UserInputError(f"image folder {root!r} has no class folders; lay it out as {LAYOUT}")
    paths, labels = [], []
    for index, name in enumerate(classes):
        folder = os.path.join(root, name)
        found = []
        for entry in sorted(os.listdir(folder)):
            full = os.path.join(folder, entry)
            if is_ignored(entry):
                continue
            if os.path.isdir(full):
                raise UserInputError(
                    f"unexpected folder {full!r}: images sit at {LAYOUT}; move its images "
                    f"up a level or remove it"
                )
            if images_lib.is_image(entry):
                found.append(full)
        if not found:
            raise UserInputError(
                f"class folder {folder!r} holds no .png or .jpg images; add some or remove it"
            )
        paths += found
        labels += [index] * len(found)
    return paths, labels, tuple(classes)


def load(
    root: str, size: int, channels: int = 3, cache_dir: str | None = None
) -> images_lib.ImageSet:
    """Reads every image under `root`, through the cache in `cache_dir` when it matches.

    Args:
        root: the folder of class folders.
        size: side the images are resized to.
        channels: 3 (RGB) or 1 (grayscale).
        cache_dir: where decoded sets are kept (None: decode without caching).

    Raises:
        UserInputError: for a bad layout (`list_images`) or an unreadable image.
    """
    return decode(root, *list_images(root), size, channels, cache_dir)


def decode(
    root: str,
    paths: list[str],
    labels: list[int],
    classes: tuple[str, ...],
    size: int,
    channels: int,
    cache_dir: str | None,
) -> images_lib.ImageSet:
    """Decodes the images `list_images(root)` found (or reads them from the cache)."""
    cache = None
    if cache_dir is not None:
        key = images_lib.fingerprint(root, paths, "image_folder", size, channels)
        cache = (cache_dir, key)
    return images_lib.load(paths, labels, classes, size, channels, cache)


def read_split_file(path: str, classes: tuple[str, ...]) -> ClassSplit:
    """The split a JSON file gives: `{"train": [...], "validation": [...], "test": [...]}`.

    Each list holds class folder names; a class listed nowhere is not used.

    Raises:
        UserInputError: if the file cannot be read, is not such an object, names a class
            that is not a folder, or puts a class in two parts.
    """
    expected = (
        'a JSON object {"train": [...], "validation": [...], "test": [...]} of class folder names'
    )
    try:
        with open(path) as f:
            parts = json.load(f)
    except OSError as e:
        raise UserInputError(f"cannot read split file {path!r} ({e.strerror})") from None
    except ValueError as e:
        raise UserInputError(
            f"split file {path!r} is not valid JSON ({e}); write {expected}"
        ) from None
    if (
        not isinstance(parts, dict)
        or sorted(parts) != sorted(PARTS)
        or not all(
            isinstance(names, list) and names and all(isinstance(n, str) for n in names)
            for names in parts.values()
        )
    ):
        raise UserInputError(
            f"split file {path!r} must be {expected}, each list non-empty, and nothing else"
        )
    unknown = sorted({n for names in parts.values() for n in names} - set(classes))
    if unknown:
        raise UserInputError(
            f"split file {path!r} names {len(unknown)} class(es) that are not folders of the "
            f"data: {unknown[:5]}"
        )
    seen: dict[str, str] = {}
    for part in PARTS:
        for name in parts[part]:
            if seen.setdefault(name, part) != part or parts[part].count(name) > 1:
                raise UserInputError(
                    f"split file {path!r} lists class {name!r} twice (in {seen[name]!r} and "
                    f"{part!r}); every class belongs to at most one part"
                )
    index = {name: i for i, name in enumerate(classes)}
    train, validation, test = (np.sort([index[n] for n in parts[p]]) for p in PARTS)
    return ClassSplit(train=train, validation=validation, test=test)
