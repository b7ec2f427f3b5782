"""`DIR/split.json`: the class split a classification run was trained on, and its check.

A run's numbers are only worth the split behind them, and the split is rebuilt from the
data every time a run starts, resumes or is meta-tested. So the first start records it
(class names per part and a checksum of the decoded images), and every later start and
every `maml_dist.evaluate` rebuilds it from the data given and refuses to go on when it
differs: a meta-test class that went missing, a class that changed parts, or images that
changed. A moved or re-zipped copy of the same data passes (nothing here depends on paths).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np

from maml_dist.errors import UserInputError

FILE = "split.json"
PARTS = ("train", "validation", "test")


def checksum(images: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> str:
    """A digest of the decoded images, their labels and the class names.

    Decoded pixels rather than source files, so a folder and its zip agree; blake2b
    because it reads a memory-mapped GB (mini-ImageNet) in about a second.
    """
    digest = hashlib.blake2b(digest_size=16)
    for array in (images, labels):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        # In slices, so a memory-mapped set is not copied whole into memory.
        flat = array.reshape(-1)
        step = 1 << 26
        for start in range(0, flat.size, step):
            digest.update(flat[start : start + step].tobytes())
    digest.update(json.dumps(list(names)).encode())
    return "blake2b:" + digest.hexdigest()


def names_digest(names: Sequence[str]) -> str:
    """A short digest of a list of class names (results.json's meta-test classes)."""
    return "blake2b:" + hashlib.blake2b(json.dumps(list(names)).encode(), digest_size=8).hexdigest()


def path(workdir: str) -> str:
    """Where a run keeps its split record."""
    return os.path.join(workdir, FILE)


def read(workdir: str) -> dict | None:
    """The recorded split of the run in `workdir`, or None if it has none (older runs).

    Raises:
        UserInputError: if the file exists but is not a split record.
    """
    file = path(workdir)
    if not os.path.exists(file):
        return None
    try:
        with open(file) as f:
            record = json.load(f)
        if not isinstance(record, dict) or any(not isinstance(record.get(p), list) for p in PARTS):
            raise ValueError("not an object with train, validation and test lists")
    except (OSError, ValueError) as e:
        raise UserInputError(
            f"{file!r} is not a readable split record ({e}); restore it from a copy of the "
            f"run, or start a new --workdir"
        ) from None
    return record


def write(workdir: str, record: dict) -> None:
    """Writes `record` as the run's split record (atomically: a crash leaves no half file)."""
    file = path(workdir)
    with open(file + ".tmp", "w") as f:
        json.dump(record, f, indent=1)
    os.replace(file + ".tmp", file)


def difference(recorded: dict, current: dict) -> str | None:
    """How `current` differs from `recorded`, in a phrase, or None if they are the same."""
    for part in PARTS:
        was, now = recorded[part], current[part]
        if was == now:
            continue
        missing = [c for c in was if c not in set(now)]
        if missing:
            where = _part_of(missing[0], current)
            fate = f"is in its {where} part" if where else "is not in it"
            return f"the recorded {part} part has {missing[0]!r}, which {fate}" + (
                f" ({len(missing)} such classes)" if len(missing) > 1 else ""
            )
        extra = [c for c in now if c not in set(was)]
        if extra:
            return f"its {part} part has {extra[0]!r}, which the recorded one has not" + (
                f" ({len(extra)} such classes)" if len(extra) > 1 else ""
            )
        return f"its {part} part lists the recorded classes in another order"
    if recorded.get("checksum") != current.get("checksum"):
        return (
            f"its classes are the recorded ones but its images are not (checksum "
            f"{current.get('checksum')} against the recorded {recorded.get('checksum')})"
        )
    return None


def _part_of(name: str, record: dict) -> str | None:
    return next((p for p in PARTS if name in set(record[p])), None)


def check(workdir: str, current: dict, data: str, fix: str) -> bool:
    """Checks the split rebuilt from the data against the run's record, if it has one.

    Args:
        workdir: the run directory.
        current: the split record of the data given now (`ImageClassification.split_record`).
        data: where the data comes from, for the message.
        fix: what the user can do, for the message.

    Returns:
        Whether the run had a record (it was checked); False for runs made before records.

    Raises:
        UserInputError: naming the first difference.
    """
    recorded = read(workdir)
    if recorded is None:
        return False
    diff = difference(recorded, current)
    if diff is not None:
        raise UserInputError(
            f"the data in {data!r} does not give the class split this run recorded in "
            f"{path(workdir)!r}: {diff}; {fix}"
        )
    return True
