"""The 20 Omniglot one-shot classification runs of Lake et al. (2015), `all_runs.zip`.

Layout, zipped or extracted (any folder above the runs is allowed):
`runNN/training/classKK.png` (20 images, one per class), `runNN/test/itemMM.png` (20
images) and `runNN/class_labels.txt`, one line per test item:
`runNN/test/itemMM.png runNN/training/classKK.png`, its true class. Images are 105x105
like the rest of Omniglot and are resized the same way.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import zipfile

import numpy as np

from maml_dist.data.omniglot import decode_image, is_ignored
from maml_dist.errors import UserInputError

LABELS_FILE = "class_labels.txt"
RUNS_HINT = (
    "all_runs.zip comes with the Omniglot data set (https://github.com/brendenlake/omniglot, "
    "folder python/one-shot-classification)"
)


# The alphabet of each run: two runs for each of ten alphabets of images_evaluation, in
# this order (run01 and run02 Atlantean, ...). Established by matching the runs' images with
# the data set's files (github.com/jvlmdr/omniglot-eval, lake-evaluation/run_alphabets.txt).
RUN_ALPHABETS = (
    "Atlantean",
    "Ge_ez",
    "Glagolitic",
    "Gurmukhi",
    "Kannada",
    "Malayalam",
    "Manipuri",
    "Old_Church_Slavonic_(Cyrillic)",
    "Tengwar",
    "Tibetan",
)


def run_alphabet(name: str) -> str | None:
    """The alphabet of Lake et al.'s run `name` ("run01" ... "run20"), or None if unknown."""
    if len(name) == 5 and name.startswith("run") and name[3:].isdigit():
        number = int(name[3:])
        if 1 <= number <= 2 * len(RUN_ALPHABETS):
            return RUN_ALPHABETS[(number - 1) // 2]
    return None


def overlap(runs: list[OneShotRun], train_classes: list[str]) -> list[str]:
    """The runs' alphabets that meta-training saw characters of, sorted.

    Args:
        runs: the one-shot runs; those of unknown alphabet (`run_alphabet`) are not counted.
        train_classes: the meta-training classes, as "Alphabet/character".
    """
    alphabets = {run_alphabet(run.name) for run in runs} - {None}
    trained = {name.split("/", 1)[0] for name in train_classes}
    return sorted(alphabets & trained)


@dataclasses.dataclass(frozen=True)
class OneShotRun:
    """One 20-way 1-shot problem.

    Attributes:
        name: the run's folder name ("run01").
        support_x: (ways, size, size) uint8 training images, class i at index i.
        query_x: (items, size, size) uint8 test images.
        query_y: (items,) int32 true class index of each test image.
    """

    name: str
    support_x: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray


def load_runs(path: str, image_size: int = 28) -> list[OneShotRun]:
    """Reads every run under `path` (a folder or a zip), sorted by name.

    Raises:
        UserInputError: naming the path, if it is missing, holds no runs, or a run's
            labels name a missing image or a malformed line.
    """
    if not os.path.exists(path):
        raise UserInputError(f"one-shot runs {path!r} do not exist; {RUNS_HINT}")
    files = _read_all(path)
    roots = sorted(
        posixpath.dirname(name) for name in files if posixpath.basename(name) == LABELS_FILE
    )
    if not roots:
        raise UserInputError(f"{path!r} holds no run (no runNN/{LABELS_FILE} in it); {RUNS_HINT}")
    return [_run(path, files, root, image_size) for root in roots]


def _read_all(path: str) -> dict[str, bytes]:
    """Every file under `path`, by '/'-separated relative name."""
    out = {}
    if os.path.isdir(path):
        for root, dirs, names in os.walk(path):
            dirs[:] = [d for d in dirs if not is_ignored(d)]
            for name in names:
                if not is_ignored(name):
                    full = os.path.join(root, name)
                    with open(full, "rb") as f:
                        out[os.path.relpath(full, path).replace(os.sep, "/")] = f.read()
        return out
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                parts = info.filename.rstrip("/").split("/")
                if not info.is_dir() and not any(is_ignored(p) for p in parts):
                    out[info.filename] = archive.read(info)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise UserInputError(f"{path!r} is not a readable zip file ({e})") from None
    return out


def _run(path: str, files: dict[str, bytes], root: str, size: int) -> OneShotRun:
    """One run from its folder `root` ('' or 'runNN' or 'all_runs/runNN')."""
    prefix = root + "/" if root else ""
    training = sorted(n for n in files if n.startswith(prefix + "training/"))
    if not training:
        raise UserInputError(f"run {path}:{root!r} has no training/ images")
    classes = {posixpath.basename(n): i for i, n in enumerate(training)}
    queries, labels = [], []
    text = files[prefix + LABELS_FILE].decode()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        # Lines name files as runNN/test/itemMM.png; only the last two parts are used, so
        # a run still reads when its folder was renamed.
        if len(fields) != 2 or posixpath.basename(fields[1]) not in classes:
            raise UserInputError(
                f"{path}:{prefix}{LABELS_FILE} line {number} is {line.strip()!r}; expected "
                f"'<run>/test/<item>.png <run>/training/<class>.png' naming files of the run"
            )
        item = prefix + "/".join(fields[0].split("/")[-2:])
        if item not in files:
            raise UserInputError(f"{path}:{item!r}, named in line {number}, is missing")
        queries.append(decode_image(files[item], f"{path}:{item}", size))
        labels.append(classes[posixpath.basename(fields[1])])
    support = [decode_image(files[n], f"{path}:{n}", size) for n in training]
    return OneShotRun(
        name=posixpath.basename(root) or os.path.basename(path),
        support_x=np.stack(support),
        query_x=np.stack(queries),
        query_y=np.asarray(labels, np.int32),
    )
