"""Process-0 metric sinks: TensorBoard (tensorboardX) and `metrics.jsonl`."""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import logging
from tensorboardX import SummaryWriter

from maml_dist.storage import writing

_FLUSH_SECS = 30  # how often TensorBoard's events reach the disk (tensorboardX's flush_secs)


class MetricWriter:
    """Writes scalars and images; a no-op on processes other than 0.

    `metrics.jsonl` holds one JSON object per logged step. On resume, records after the
    restored step (logged after the last checkpoint, before an interruption) are dropped so
    the file reads as one uninterrupted run.

    A write that fails (a full disk, no permission) raises `storage.WriteError` naming
    the file, in the calling thread: TensorBoard events too are written there, not in
    tensorboardX's background thread, where a failure would kill the thread (a traceback)
    and then block the run once its queue filled.
    """

    def __init__(self, workdir: str, enabled: bool, resume_step: int = 0):
        """Opens the sinks of `workdir`, truncating records after `resume_step`."""
        self.enabled = enabled
        if not enabled:
            return
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        self.tb_path = os.path.join(workdir, "tb")
        with writing("metrics", self.jsonl_path):
            _drop_records_after(self.jsonl_path, resume_step)
            self._jsonl = open(self.jsonl_path, "a")  # noqa: SIM115 (closed in close())
        with writing("TensorBoard events", self.tb_path):
            # purge_step makes TensorBoard hide events after the resumed step as well.
            self._tb = SummaryWriter(
                self.tb_path, purge_step=resume_step or None, flush_secs=_FLUSH_SECS
            )
            _write_in_calling_thread(self._tb)
        self._flushed = time.monotonic()

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        """Writes `scalars` as one JSON line and as TensorBoard scalars (see `tb_tag`)."""
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        with writing("metrics", self.jsonl_path):
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        with writing("TensorBoard events", self.tb_path):
            for name, value in scalars.items():
                self._tb.add_scalar(tb_tag(name), value, step)
            if time.monotonic() - self._flushed > _FLUSH_SECS:
                self._tb.flush()
                self._flushed = time.monotonic()

    def write_hparams(self, hparams: dict, metrics: dict[str, float], step: int) -> None:
        """Records the run's hyper-parameters and final metrics (TensorBoard's HParams view).

        Written with tensorboardX `add_hparams` into `tb/hparams`.
        """
        if not self.enabled or not metrics:
            return
        scores = {tb_tag(k): float(v) for k, v in metrics.items()}
        with writing("TensorBoard events", os.path.join(self.tb_path, "hparams")):
            self._tb.add_hparams(hparams, scores, name="hparams", global_step=step)

    def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
        """Writes an (H, W, 3) uint8 image."""
        if self.enabled:
            with writing("TensorBoard events", self.tb_path):
                self._tb.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        """Flushes and closes the sinks (both, even if the first fails); closing twice is a no-op.

        Raises:
            storage.WriteError: for the first sink whose last write failed.
        """
        if not self.enabled:
            return
        self.enabled = False
        try:
            with writing("metrics", self.jsonl_path):
                self._jsonl.close()
        finally:
            try:
                with writing("TensorBoard events", self.tb_path):
                    self._tb.close()
            except Exception:
                # The file is closed even so (io closes it after a failed flush); marked
                # closed, tensorboardX's exit hook does not flush it again (a traceback).
                events = getattr(self._tb.file_writer, "event_writer", None)
                if events is not None:
                    events._closed = True
                raise


def _write_in_calling_thread(writer: SummaryWriter) -> None:
    """Makes `writer` write its events in the thread that adds them (tensorboardX 2.6).

    Its background thread writes them otherwise, where a failed write is lost in a
    traceback. The thread is stopped first: it writes the events already queued (the
    purge-step marker), so none is written out of order. Buffered as before; the
    buffer reaches the disk every `_FLUSH_SECS`, on a full buffer and at `close`.
    """
    events = getattr(writer.file_writer, "event_writer", None)
    worker = getattr(events, "_worker", None)
    sink = getattr(events, "_ev_writer", None)
    if worker is None or sink is None:
        return  # another tensorboardX: keep its own writing thread
    worker.stop()
    events.add_event = sink.write_event


_PERF = ("tasks_per_sec", "sec_per_step", "data_sec_per_step", "data_wait_sec_per_step")


def tb_tag(name: str) -> str:
    """TensorBoard tag of a metric name: `eval_x` -> `eval/x`, speed -> `perf/`, else `train/`."""
    if name.startswith("eval_"):
        return "eval/" + name.removeprefix("eval_")
    return ("perf/" if name in _PERF else "train/") + name


def _drop_records_after(path: str, step: int) -> None:
    """Keeps the records up to `step`, and drops a last line torn by a killed process."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    if lines and not lines[-1].endswith("\n"):
        # A process killed mid-write (kill -9, a lost host) leaves half a record. It is of
        # a step no older than the last checkpoint, whose record is whole (the trainer
        # writes it before saving), so it is rewritten when that step is run again.
        logging.warning("dropping the torn last line of %s: %r", path, lines[-1][:80])
        lines[-1] = '{"step": Infinity}\n'  # dropped below like any later record
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)


def read_jsonl(path: str) -> list[dict]:
    """Reads a `metrics.jsonl` file into a list of records."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
