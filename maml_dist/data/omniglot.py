"""Omniglot reader: zips or extracted folders, resized to 28x28 uint8, with a disk cache.

Layout (the official release and its "minimal" splits alike):
`<set>/<Alphabet>/<characterNN>/<NNNN_DD>.png`, 105x105 1-bit PNGs, DD the drawer. A
class is (alphabet, character); the same character found under several roots (the
minimal splits share Greek and Latin) is counted once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Iterator

import numpy as np
from PIL import Image

from maml_dist.errors import UserInputError
from maml_dist.progress import Progress

SET_NAMES = (
    "images_background",
    "images_evaluation",
    "images_background_small1",
    "images_background_small2",
)
DOWNLOAD_HINT = (
    "get images_background.zip and images_evaluation.zip from "
    "https://github.com/brendenlake/omniglot (folder python/) and put them, zipped or "
    "extracted, in that folder"
)
_CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Omniglot:
    """Images and their labels, in memory.

    Attributes:
        images: (N, size, size) uint8, ink = 255, background = 0.
        labels: (N,) int32 class index into `classes`.
        drawers: (N,) int32 drawer number (1-20).
        classes: class index -> (alphabet, character).
    """

    images: np.ndarray
    labels: np.ndarray
    drawers: np.ndarray
    classes: tuple[tuple[str, str], ...]

    @property
    def alphabets(self) -> tuple[str, ...]:
        """Alphabet names, sorted."""
        return tuple(sorted({a for a, _ in self.classes}))


def find_sources(data_dir: str, sets: tuple[str, ...]) -> list[str]:
    """Paths of the requested sets in `data_dir`: `<set>.zip` or an extracted `<set>/`.

    Raises:
        UserInputError: naming the folder and how to get the data, if a set is missing.
    """
    if not os.path.isdir(data_dir):
        raise UserInputError(f"Omniglot folder {data_dir!r} does not exist; {DOWNLOAD_HINT}")
    found = []
    for name in sets:
        folder, archive = os.path.join(data_dir, name), os.path.join(data_dir, name + ".zip")
        if os.path.isdir(folder):
            found.append(folder)
        elif os.path.isfile(archive):
            found.append(archive)
        else:
            raise UserInputError(
                f"Omniglot set {name!r} is neither {archive!r} nor a folder {folder!r}; "
                f"{DOWNLOAD_HINT}"
            )
    return found


def load(sources: list[str], image_size: int = 28, cache_dir: str | None = None) -> Omniglot:
    """Reads every source (zip or folder), using the cache in `cache_dir` when it matches.

    Args:
        sources: paths of `<set>.zip` files or extracted `<set>` folders.
        image_size: side of the resized images.
        cache_dir: where to keep the decoded arrays (None: no cache).

    Raises:
        UserInputError: naming the path, for a missing source, a corrupt or empty zip, or
            a file that is not an image.
    """
    for path in sources:
        if not os.path.exists(path):
            raise UserInputError(f"Omniglot source {path!r} does not exist; {DOWNLOAD_HINT}")
    cache_path = None
    if cache_dir is not None:
        key = _cache_key(sources, image_size)
        cache_path = os.path.join(cache_dir, f"omniglot-{key[:24]}.npz")
        if os.path.exists(cache_path):
            return _read_cache(cache_path)

    seen: dict[tuple[str, str, str], None] = {}
    class_index: dict[tuple[str, str], int] = {}
    images, labels, drawers = [], [], []
    # Listed first (a few MB of PNG bytes) so the decoding can report its progress.
    files = {path: list(_files(path)) for path in sources}
    progress = Progress("decoding images", sum(map(len, files.values())), "images")
    for path in sources:
        count = 0
        for (alphabet, character, filename), data, where in files[path]:
            progress.update()
            if (alphabet, character, filename) in seen:
                continue  # the same image under another root
            seen[(alphabet, character, filename)] = None
            images.append(decode_image(data, where, image_size))
            labels.append(class_index.setdefault((alphabet, character), len(class_index)))
            drawers.append(_drawer(filename))
            count += 1
        if count == 0 and not files[path]:
            raise UserInputError(
                f"{path!r} holds no Omniglot images (expected <set>/<Alphabet>/<character>/"
                f"<image>.png); {DOWNLOAD_HINT}"
            )
    progress.close()
    dataset = Omniglot(
        images=np.stack(images).astype(np.uint8),
        labels=np.asarray(labels, np.int32),
        drawers=np.asarray(drawers, np.int32),
        classes=tuple(class_index),
    )
    if cache_path is not None:
        _write_cache(cache_path, dataset)
    return dataset


def _files(path: str) -> Iterator[tuple[tuple[str, str, str], bytes, str]]:
    """Yields ((alphabet, character, filename), bytes, display path) of one source."""
    if os.path.isdir(path):
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not is_ignored(d))
            parts = os.path.relpath(root, path).split(os.sep)
            for name in sorted(names):
                if is_ignored(name):
                    continue
                full = os.path.join(root, name)
                if len(parts) != 2:
                    raise UserInputError(
                        f"unexpected file {full!r}: Omniglot files sit at "
                        f"<set>/<Alphabet>/<character>/<image>.png"
                    )
                with open(full, "rb") as f:
                    yield (parts[0], parts[1], name), f.read(), full
        return
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserInputError(f"{path!r} is not a readable zip file ({e})") from None
    with archive:
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            parts = info.filename.rstrip("/").split("/")
            if info.is_dir() or any(is_ignored(p) for p in parts):
                continue
            where = f"{path}:{info.filename}"
            if len(parts) != 4:
                raise UserInputError(
                    f"unexpected file {where!r}: Omniglot files sit at "
                    f"<set>/<Alphabet>/<character>/<image>.png"
                )
            try:
                data = archive.read(info)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise UserInputError(f"{where!r} cannot be read from the zip ({e})") from None
            yield (parts[1], parts[2], parts[3]), data, where


def is_ignored(name: str) -> bool:
    """Whether a file or folder name is operating-system litter, not data (.DS_Store, ...)."""
    return name.startswith(".") or name in ("__MACOSX", "Thumbs.db", "desktop.ini")


def decode_image(data: bytes, where: str, size: int) -> np.ndarray:
    """PNG bytes -> (size, size) uint8 with ink = 255, antialiased (Lanczos) resize."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as e:
        raise UserInputError(f"{where!r} is not an image ({e})") from None
    ink = Image.eval(image.convert("L"), lambda v: 255 - v)
    return np.asarray(ink.resize((size, size), Image.Resampling.LANCZOS), np.uint8)


def _drawer(filename: str) -> int:
    stem = os.path.splitext(filename)[0]
    try:
        return int(stem.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        return 0  # not the official naming; the drawer is then unknown


def _cache_key(sources: list[str], image_size: int) -> str:
    """Checksum of the sources: zip bytes; for folders, every file's path, size and mtime."""
    h = hashlib.sha256(f"v{_CACHE_VERSION} size={image_size}".encode())
    for path in sources:
        h.update(os.path.abspath(path).encode())
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                for name in sorted(names):
                    st = os.stat(os.path.join(root, name))
                    h.update(f"{root}/{name}:{st.st_size}:{st.st_mtime_ns}".encode())
        else:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def _write_cache(path: str, dataset: Omniglot) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + f".tmp{os.getpid()}.npz"
    np.savez(
        tmp,
        images=dataset.images,
        labels=dataset.labels,
        drawers=dataset.drawers,
        classes=np.asarray(json.dumps(dataset.classes)),
    )
    os.replace(tmp, path)  # atomic: concurrent processes never read half a file


def _read_cache(path: str) -> Omniglot:
    with np.load(path) as f:
        return Omniglot(
            images=f["images"],
            labels=f["labels"],
            drawers=f["drawers"],
            classes=tuple(tuple(c) for c in json.loads(str(f["classes"]))),
        )


def default_cache_dir() -> str:
    """`$XDG_CACHE_HOME/maml_dist` (default `~/.cache/maml_dist`)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "maml_dist")
