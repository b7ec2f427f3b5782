"""Host-sampled meta-batches for the trainer, built ahead in a thread as global arrays.

Each process samples only the tasks of its own devices (episodes are pure functions of
seed, step and global task index, so which process builds a task does not change it) and
assembles them into arrays sharded `P(None, "tasks")` over the global mesh: steps on the
leading axis, tasks split over the devices. A background thread builds the next chunks
while the device runs the current one; with `workers` > 1, that many worker processes
draw the episodes of successive chunks at once (numpy episode drawing holds the GIL, so
threads would not add up), and the thread places them on the devices in order.
"""

from __future__ import annotations

import collections
import multiprocessing
import queue
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from maml_dist.parallel import AXIS
from maml_dist.types import TRAIN_STREAM, TaskBatch

_DONE = object()


class _Failure:
    """An exception raised in the producer thread, to be raised again in the trainer."""

    def __init__(self, error: BaseException):
        self.error = error


class HostFeed:
    """Builds the meta-batches of a fixed sequence of chunks of steps, `depth` chunks ahead.

    The producer runs ahead of the trainer, so build time is reported as a mean over all
    steps built so far, and wait time (the trainer blocked on the feed: the part of data
    time that is not hidden behind the device) per step since the previous report.
    """

    def __init__(
        self,
        sampler,
        seed: int,
        mesh: jax.sharding.Mesh,
        per_device: int,
        chunks: Iterable[tuple[int, int]],
        depth: int = 2,
        workers: int = 1,
    ):
        """Starts the producer thread.

        Args:
            sampler: has `.batch(seed, stream, step, indices) -> TaskBatch` (numpy).
            seed: the run's seed.
            mesh: the task mesh.
            per_device: tasks per device (padding included).
            chunks: (first step, end step) of every chunk the trainer will run, in order.
            depth: chunks built ahead of the one running.
            workers: processes drawing episodes; 1 draws them in the feed's thread.
        """
        self.sampler, self.seed, self.workers = sampler, seed, workers
        self.sharding = NamedSharding(mesh, P(None, AXIS))
        self.padded = per_device * mesh.shape[AXIS]
        index_map = self.sharding.addressable_devices_indices_map((1, self.padded))
        # This process's devices' task slices (a device may share one with none other).
        self.slices = sorted({idx[1].indices(self.padded)[:2] for idx in index_map.values()})
        self._built_seconds = 0.0
        self._built_steps = 0
        self._wait_seconds = 0.0
        self._lock = threading.Lock()  # the producer adds to the build totals, `times` reads
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._produce, args=(list(chunks),), name="HostFeed", daemon=True
        )
        self._thread.start()

    def build(self, start: int, end: int) -> TaskBatch:
        """The meta-batches of steps start..end-1 as global arrays (n, padded, ...)."""
        return self.place(start, end, _draw(self.sampler, self.seed, self.slices, start, end))

    def place(self, start: int, end: int, local: dict) -> TaskBatch:
        """This process's slices of steps start..end-1 (`_draw`'s) as global arrays."""

        def place(field: str) -> jax.Array:
            first = getattr(local[self.slices[0]], field)
            shape = (end - start, self.padded, *first.shape[2:])

            def data(index):
                a, b = index[1].indices(self.padded)[:2]
                return getattr(local[a, b], field)

            return jax.make_array_from_callback(shape, self.sharding, data)

        return TaskBatch(**{f: place(f) for f in TaskBatch.__dataclass_fields__})

    def _produce(self, chunks: list[tuple[int, int]]) -> None:
        try:
            if self.workers > 1:
                self._produce_in_workers(chunks)
                return
            for start, end in chunks:
                t = time.perf_counter()
                batches = self.build(start, end)
                self._count(time.perf_counter() - t, end - start)
                if not self._put((start, end, batches)):
                    return
            self._put(_DONE)
        except BaseException as e:  # re-raised in the trainer's thread by `take`
            self._put(_Failure(e))

    def _produce_in_workers(self, chunks: list[tuple[int, int]]) -> None:
        """Keeps `workers` chunks drawing in worker processes, placing them in order."""
        # "spawn": a forked child of a process running JAX's threads can deadlock.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            self.workers,
            mp_context=context,
            initializer=_start_worker,
            initargs=(self.sampler, self.seed, self.slices),
        ) as pool:
            ahead = collections.deque()
            for start, end in chunks:
                ahead.append((start, end, pool.submit(_draw_in_worker, start, end)))
                if len(ahead) < self.workers:
                    continue
                if not self._place_next(ahead):
                    pool.shutdown(cancel_futures=True)
                    return
            while ahead:
                if not self._place_next(ahead):
                    return
        self._put(_DONE)

    def _place_next(self, ahead: collections.deque) -> bool:
        start, end, future = ahead.popleft()
        local, seconds = future.result()  # a worker's error is raised here, then in `take`
        t = time.perf_counter()
        batches = self.place(start, end, local)
        self._count(seconds + time.perf_counter() - t, end - start)
        return self._put((start, end, batches))

    def _count(self, seconds: float, steps: int) -> None:
        with self._lock:
            self._built_seconds += seconds
            self._built_steps += steps

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def take(self) -> tuple[int, int, TaskBatch]:
        """The next chunk: (first step, end step, batches). Raises what the producer raised."""
        t = time.perf_counter()
        item = self._queue.get()
        self._wait_seconds += time.perf_counter() - t
        if isinstance(item, _Failure):
            raise item.error
        if item is _DONE:
            raise RuntimeError("the host feed has no more chunks")
        return item

    def times(self, steps: int) -> tuple[float, float]:
        """(build seconds per step so far, wait seconds per step over the last `steps`)."""
        with self._lock:
            build = self._built_seconds / max(self._built_steps, 1)
        wait, self._wait_seconds = self._wait_seconds / steps, 0.0
        return build, wait

    def close(self) -> None:
        """Stops the producer and waits for it."""
        self._stop.set()
        self._thread.join()


def _draw(sampler, seed: int, slices: list, start: int, end: int) -> dict:
    """Episodes of steps start..end-1 for each task slice: {(a, b): TaskBatch (n, b - a, ...)}."""
    local = {}
    for a, b in slices:
        steps = [sampler.batch(seed, TRAIN_STREAM, s, range(a, b)) for s in range(start, end)]
        local[a, b] = jax.tree.map(lambda *xs: np.stack(xs), *steps)
    return local


# A worker process's sampler, seed and slices, received once when it starts.
_WORKER: dict = {}


def _start_worker(sampler, seed: int, slices: list) -> None:
    _WORKER.update(sampler=sampler, seed=seed, slices=slices)


def _draw_in_worker(start: int, end: int) -> tuple[dict, float]:
    t = time.perf_counter()
    local = _draw(_WORKER["sampler"], _WORKER["seed"], _WORKER["slices"], start, end)
    return local, time.perf_counter() - t
