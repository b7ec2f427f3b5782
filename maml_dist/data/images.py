"""Decoded image sets: image files -> one (N, size, size, C) uint8 array, cached on disk.

Image folders and mini-ImageNet decode every image once, with Pillow, into an array
saved with `np.save` and read back with `np.load(mmap_mode="r")`: the episode sampler then
reads only the rows it draws from the page cache, and never decodes during training.

Cache entries are keyed by a fingerprint of the sources: every image's relative path,
size in bytes and modification time (nanoseconds), plus the decode settings. The pixels
themselves are not hashed (that would read every byte at each start-up, gigabytes for
mini-ImageNet), so a file rewritten with the same size and its old modification time
restored would not be noticed; any ordinary edit, copy or re-download changes the time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Sequence

import numpy as np
from PIL import Image

from maml_dist.errors import UserInputError

# Pillow modes of the two channel counts an image set may have.
MODES = {1: "L", 3: "RGB"}
# File name suffixes read as images (any case).
SUFFIXES = (".png", ".jpg", ".jpeg")
# Part of every key: bump when the decoding changes, so old entries are not reused.
_CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """Decoded images and their labels.

    Attributes:
        images: (N, size, size, C) uint8 (C = 1 grayscale, 3 RGB), memory-mapped when it
            comes from the cache.
        labels: (N,) int32 class index into `classes`.
        classes: class index -> name (a folder name, or a mini-ImageNet WordNet id).
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]


def is_image(name: str) -> bool:
    """Whether a file name has one of SUFFIXES."""
    return name.lower().endswith(SUFFIXES)


def decode_image(path: str, size: int, channels: int) -> np.ndarray:
    """One image file -> (size, size, channels) uint8.

    Converted with Pillow to grayscale ("L") or RGB (an alpha channel is dropped) and
    resized, not cropped, to size x size with the Lanczos filter; an image already that
    size is kept as it is.

    Raises:
        UserInputError: naming the path, if Pillow cannot read it.
    """
    try:
        with Image.open(path) as image:
            image = image.convert(MODES[channels])
    except Exception as e:  # Pillow raises many types for one cause: a bad file
        reason = " ".join(str(e).split())  # one line, whatever the library wrote
        raise UserInputError(
            f"cannot read image {path!r} ({type(e).__name__}: {reason}); fix or remove the file"
        ) from None
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image, np.uint8).reshape(size, size, channels)


def fingerprint(root: str, paths: Sequence[str], *settings) -> str:
    """The cache key of images `paths` under `root` and the decode `settings`.

    Hashes each path relative to `root` with its size and modification time (module
    docstring: the pixels are not read), so the same files moved elsewhere with their
    times kept (`cp -p`, `rsync -a`) keep their key.

    Raises:
        UserInputError: naming a listed file that does not exist.
    """
    h = hashlib.sha256(json.dumps([_CACHE_VERSION, *settings]).encode())
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as e:
            raise UserInputError(f"cannot read image {path!r} ({e.strerror})") from None
        h.update(f"{os.path.relpath(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def load(
    paths: Sequence[str],
    labels: Sequence[int],
    classes: Sequence[str],
    size: int,
    channels: int,
    cache: tuple[str, str] | None = None,
) -> ImageSet:
    """Decodes `paths` into an ImageSet, or reads it from the cache entry `cache`.

    Args:
        paths: image files, in the order of their rows.
        labels: class index of each path.
        classes: class names.
        size: side of the decoded images.
        channels: 1 (grayscale) or 3 (RGB).
        cache: (cache folder, key from `fingerprint`), or None to decode without caching.

    Raises:
        UserInputError: naming the first image that cannot be read.
    """
    entry = None
    if cache is not None:
        entry = os.path.join(cache[0], f"images-{cache[1][:32]}")
        if os.path.exists(os.path.join(entry, "classes.json")):  # written last
            return _read(entry)
    labels = np.asarray(labels, np.int32)
    shape = (len(paths), size, size, channels)
    if entry is None:
        images = np.empty(shape, np.uint8)
        for i, path in enumerate(paths):
            images[i] = decode_image(path, size, channels)
        return ImageSet(images, labels, tuple(classes))

    # Decoded straight into the file, so a set larger than memory can be cached.
    os.makedirs(cache[0], exist_ok=True)
    tmp = f"{entry}.tmp{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    try:
        images = np.lib.format.open_memmap(
            os.path.join(tmp, "images.npy"), mode="w+", dtype=np.uint8, shape=shape
        )
        for i, path in enumerate(paths):
            images[i] = decode_image(path, size, channels)
        images.flush()
        del images
        np.save(os.path.join(tmp, "labels.npy"), labels)
        with open(os.path.join(tmp, "classes.json"), "w") as f:
            json.dump(list(classes), f)
        try:
            os.rename(tmp, entry)  # atomic: a reader never sees half an entry
        except OSError:
            if not os.path.exists(os.path.join(entry, "classes.json")):
                raise
            # Another process wrote the same entry first; theirs is as good as ours.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _read(entry)


def _read(entry: str) -> ImageSet:
    with open(os.path.join(entry, "classes.json")) as f:
        classes = tuple(json.load(f))
    return ImageSet(
        images=np.load(os.path.join(entry, "images.npy"), mmap_mode="r"),
        labels=np.load(os.path.join(entry, "labels.npy")),
        classes=classes,
    )
