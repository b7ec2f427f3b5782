"""Preemption: SIGTERM (or, in one process, SIGINT) stops the run at the next chunk.

Schedulers preempt by sending SIGTERM and allowing a few seconds. The loop asks
`requested()` between chunks, finishes the chunk in flight, saves a checkpoint at the
step reached and returns, so the process exits 0 and a restart continues as if nothing
had happened. In one process a signal handler records the signal. Across processes all
must stop at the same chunk, to save the same checkpoint together: there JAX's own
preemption service (installed by `jax.distributed.initialize`, which catches SIGTERM)
hears the signal on any process and `multihost_utils.reached_preemption_sync_point`
turns it into the same chunk on every process; SIGINT keeps its default there (a
Ctrl-C'd process stops, and its peers report it lost).
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preemption:
    """A context in which SIGTERM (and SIGINT, in one process) asks the loop to stop.

    In one process a second signal of the same kind is not caught again: the previous
    handler gets it (Ctrl-C twice interrupts at once).
    """

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, object] = {}
        self._chunks = 0

    def __enter__(self) -> Preemption:
        # Python runs signal handlers in the main thread only; elsewhere (a notebook's
        # worker thread) a one-process run is simply not preemptible.
        one_process = jax.process_count() == 1
        if one_process and threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signal is None:
            self.signal = signum
            # The next one goes to whoever handled it before (default: stop at once).
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    @property
    def name(self) -> str:
        """The signal's name ("SIGTERM"), or "" if none came."""
        return signal.Signals(self.signal).name if self.signal is not None else ""

    def requested(self) -> bool:
        """Whether to stop after this chunk; every process must call it once per chunk."""
        self._chunks += 1
        # Counted in chunks, the same on every process: the service agrees on the first
        # chunk after the signal that no process has passed yet.
        if jax.process_count() > 1 and multihost_utils.reached_preemption_sync_point(self._chunks):
            self.signal = signal.SIGTERM
        return self.signal is not None
