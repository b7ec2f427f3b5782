"""Failed writes to the workdir (a full disk, no permission): one line naming the path.

A write that fails does not end the run where it happens: the sink raises `WriteError`
(what, path, the original error) and the trainer's loop turns it into the line the run
stops with, adding which checkpoints are intact (`stop_message`). Checkpoints are written
by orbax into `<step>.orbax-checkpoint-tmp` and renamed to `<step>` only once complete, so
a half-written one is never taken for a checkpoint and those before it are untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re

from maml_dist.errors import RunStoppedError


class WriteError(RunStoppedError):
    """A write to the run's storage failed; the entry points exit with status 1.

    Attributes:
        what: what was being written ("checkpoint 300", "metrics").
        path: the file or folder written to.
        error: the original error, in one line (`describe`).
    """

    def __init__(self, what: str, path: str, error: BaseException | str, advice: str = ""):
        self.what, self.path = what, path
        self.error = error if isinstance(error, str) else describe(error)
        message = f"cannot write {what} to {path!r} ({self.error})"
        super().__init__(f"{message}; {advice}" if advice else message)

    def advised(self, advice: str) -> WriteError:
        """The same failure, its line ending with `advice` (what is intact, what to do)."""
        return WriteError(self.what, self.path, self.error, advice)


def describe(error: BaseException, limit: int = 400) -> str:
    """`Type: first line of the message`, cut to `limit` characters.

    tensorstore reports an OS error inside a long message ("... Failed to write 8953 bytes
    to file 12: File too large [os_error_code='27']"); the OS's own words are kept.
    """
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    if len(text) <= limit:
        return text
    code = re.search(r"os_error_code='(\d+)'", text)
    reason = f" [Errno {code.group(1)}] {os.strerror(int(code.group(1)))}" if code else ""
    return text[: limit - len(reason) - 3] + "..." + reason


# The OS's words for the errors of storage that is full or not writable, as tensorstore
# quotes them inside its own errors.
_STORAGE_ERRNOS = (
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.EIO,
)
_STORAGE_WORDS = tuple(os.strerror(code) for code in _STORAGE_ERRNOS)


def is_storage_error(error: BaseException) -> bool:
    """Whether `error` (or one it was raised from) is the OS refusing a write.

    An OSError anywhere in the chain, or a tensorstore error quoting an OS error code
    (`[os_error_code='28']`) or the OS's words for a full or unwritable disk.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError):
            return True
        text = str(error)
        if "os_error_code=" in text or any(words in text for words in _STORAGE_WORDS):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def writing(what: str, path: str):
    """Turns an OSError raised inside the block into `WriteError(what, path, error)`."""
    try:
        yield
    except OSError as e:
        raise WriteError(what, path, e) from e


def write_text(path: str, text: str, what: str) -> None:
    """Writes `text` to `path` atomically: a failed write leaves the old file as it was."""
    tmp = path + ".tmp"
    with writing(what, path):
        try:
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.remove(tmp)  # a half-written temporary file only; the error goes on
            raise


def advice(intact: list[int], directory: str) -> str:
    """The end of the line a run stopped by a failed write ends with.

    Args:
        intact: the steps of the finished checkpoints in `directory`.
        directory: the run's checkpoint folder.
    """
    if intact:
        listed = ", ".join(str(s) for s in intact)
        return (
            f"checkpoint{'s' if len(intact) > 1 else ''} {listed} in {directory!r} "
            f"{'are' if len(intact) > 1 else 'is'} intact; free space or make the workdir "
            f"writable, then run the same command to resume from step {intact[-1]}"
        )
    return (
        "no checkpoint had been written; free space or make the workdir writable, then run "
        "the same command to start again"
    )
