"""Progress of a long wait, on process 0: done/total, rate and time left.

    progress = Progress("meta-test K=10", total=600, unit="tasks")
    for chunk in chunks:
        ...
        progress.update(len(chunk))
    progress.close()

In a log (stderr not a terminal: CI, a cluster's log file) it writes plain lines through
absl logging, at most one per 10% of the work or per `interval` seconds, and always the
last one; on a terminal it redraws one live line instead.
"""

from __future__ import annotations

import sys
import time

from absl import logging


def duration(seconds: float) -> str:
    """`h:mm:ss` (or `m:ss` under an hour)."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Reports `done/total` of a task with its rate and ETA (see the module docstring).

    Attributes:
        what: what is being done ("meta-test", "decoding images").
        total: the amount of work.
        unit: its unit ("tasks", "images").
    """

    def __init__(
        self,
        what: str,
        total: int,
        unit: str,
        interval: float = 10.0,
        stream=None,
        enabled: bool | None = None,
    ):
        """Starts the clock.

        Args:
            what: what is being done.
            total: the amount of work.
            unit: its unit.
            interval: the most seconds between two plain lines.
            stream: where a live line goes (default stderr); a terminal gets live lines.
            enabled: report at all (default: on process 0 only).
        """
        self.what, self.total, self.unit, self.interval = what, total, unit, interval
        self.stream = stream or sys.stderr
        if enabled is None:
            import jax  # here, so the data readers that report progress stay free of jax

            enabled = jax.process_index() == 0
        self.enabled = enabled
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self.start = self.last_time = time.perf_counter()
        self.last_tenth = 0

    def line(self) -> str:
        """The current report, e.g. `meta-test: 120/600 tasks, 14 tasks/s, ETA 0:34`."""
        elapsed = time.perf_counter() - self.start
        text = f"{self.what}: {self.done:,}/{self.total:,} {self.unit}"
        if self.done and elapsed > 0:
            rate = self.done / elapsed
            text += f", {rate:,.{1 if rate < 10 else 0}f} {self.unit}/s"
            if self.done < self.total:
                text += f", ETA {duration((self.total - self.done) / rate)}"
            else:
                text += f", {duration(elapsed)}"
        return text

    def update(self, n: int = 1) -> None:
        """Adds `n` units of finished work and reports if it is time to."""
        self.done = min(self.total, self.done + n)
        if not self.enabled:
            return
        now = time.perf_counter()
        tenth = 10 * self.done // max(self.total, 1)
        if self.live:
            self.stream.write("\r" + self.line() + "\033[K")
            self.stream.flush()
        elif (
            self.done == self.total
            or tenth > self.last_tenth
            or now - self.last_time >= self.interval
        ):
            logging.info("%s", self.line())
            self.last_time = now
        self.last_tenth = tenth

    def close(self) -> None:
        """Ends a live line (plain lines already ended with the last update)."""
        if self.enabled and self.live:
            self.stream.write("\n")
            self.stream.flush()
