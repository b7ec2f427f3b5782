"""What the loop records between chunks: throughput, scalars, images, hyper-parameters."""

from __future__ import annotations

import contextlib
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor

import jax
import ml_collections
from absl import logging

from maml_dist.chunking import is_multiple
from maml_dist.feed import HostFeed
from maml_dist.metrics import MetricWriter


def hparams(config: ml_collections.ConfigDict) -> dict:
    """The config as flat `a.b` hyper-parameters of the types TensorBoard shows."""
    flat = {}

    def add(prefix, tree):
        for key, value in tree.items():
            if isinstance(value, dict):
                add(f"{prefix}{key}.", value)
            elif isinstance(value, bool | int | float | str):
                flat[f"{prefix}{key}"] = value
            else:
                flat[f"{prefix}{key}"] = json.dumps(value)

    add("", json.loads(config.to_json()))
    return flat


class Drawings:
    """The validation's TensorBoard images, drawn in a thread, one at a time.

    Drawing the sinusoid figure takes ~35 ms of matplotlib (0.5 s of the paper run's 14
    validations) that the thread does beside the next chunk. The image is written from
    the loop's thread, at the first chunk boundary after it is drawn (the event file
    has one writer); a failed drawing is raised there, or at `close`, never lost.
    """

    def __init__(self, writer: MetricWriter):
        self.writer = writer
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="draw")
        self.pending: tuple[int, str, Future] | None = None

    def submit(self, step: int, tag: str, draw) -> None:
        """Draws `draw()`, an (H, W, 3) image, for `tag` at `step`, once the last one is done."""
        self.wait()
        self.pending = (step, tag, self.pool.submit(draw))

    def check(self) -> None:
        """Writes the image in flight if it is drawn (raises what drawing it raised)."""
        if self.pending is not None and self.pending[2].done():
            self.wait()

    def wait(self) -> None:
        """Waits for the image in flight and writes it."""
        pending, self.pending = self.pending, None
        if pending is not None:
            step, tag, image = pending
            self.writer.write_image(step, tag, image.result())

    def close(self) -> None:
        """Writes the last image and ends the thread."""
        try:
            self.wait()
        finally:
            self.pool.shutdown()


class Clock:
    """Training throughput, excluding time spent in eval and checkpointing."""

    def __init__(self, step: int, feed: HostFeed | None = None):
        self.feed = feed
        self.step = self.start = step
        self.time = self.started = time.perf_counter()
        self.excluded = 0.0

    @contextlib.contextmanager
    def paused(self):
        """Context in which elapsed time is not counted as training."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - t

    def lap(self, step: int) -> float:
        """Seconds of training since the previous lap, which ended at `self.step`."""
        now = time.perf_counter()
        seconds = max(now - self.time - self.excluded, 1e-9)
        self.step, self.time, self.excluded = step, now, 0.0
        return seconds


def report(writer, clock, config, schedule, end, metrics, extra) -> None:
    """Writes the records of a finished chunk: the last step's metrics plus throughput."""
    if not (is_multiple(end, config.log_every, config) or extra):
        return
    # nonfinite_in_row only steers the guard; skipped_steps is the reported count.
    metrics = {k: v for k, v in metrics.items() if k != "nonfinite_in_row"}
    last = {k: float(v[-1]) for k, v in jax.device_get(metrics).items()}
    steps = end - clock.step
    seconds = clock.lap(end)
    scalars = {
        **last,
        "learning_rate": float(schedule(end)),
        "tasks_per_sec": steps * config.meta_batch_size / seconds,
        "sec_per_step": seconds / steps,
    }
    if clock.feed is not None:
        # Host sampling runs beside the device; only the wait shows in the step time.
        build, wait = clock.feed.times(steps)
        scalars.update(data_sec_per_step=build, data_wait_sec_per_step=wait)
    scalars.update(extra)
    writer.write_scalars(end, scalars)
    total = time.perf_counter() - clock.started
    eta = total / max(end - clock.start, 1) * (config.num_steps - end)
    logging.info(
        "step %d/%d  meta_loss %.4f  (before adaptation %.4f)  %.0f tasks/s  ETA %s",
        end,
        config.num_steps,
        last["meta_loss"],
        last["loss_before"],
        scalars["tasks_per_sec"],
        time.strftime("%H:%M:%S", time.gmtime(eta)),
    )
