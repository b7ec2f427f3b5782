"""Process-0 metric sinks: TensorBoard (tensorboardX) and `metrics.jsonl`."""

from __future__ import annotations

import json
import os

import numpy as np
from absl import logging
from tensorboardX import SummaryWriter


class MetricWriter:
    """Writes scalars and images; a no-op on processes other than 0.

    `metrics.jsonl` holds one JSON object per logged step. On resume, records after the
    restored step (logged after the last checkpoint, before an interruption) are dropped so
    the file reads as one uninterrupted run.
    """

    def __init__(self, workdir: str, enabled: bool, resume_step: int = 0):
        """Opens the sinks of `workdir`, truncating records after `resume_step`."""
        self.enabled = enabled
        if not enabled:
            return
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        _drop_records_after(self.jsonl_path, resume_step)
        self._jsonl = open(self.jsonl_path, "a")  # noqa: SIM115 (closed in close())
        # purge_step makes TensorBoard hide events after the resumed step as well.
        self._tb = SummaryWriter(
            os.path.join(workdir, "tb"), purge_step=resume_step or None, flush_secs=30
        )

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        """Writes `scalars` as one JSON line and as TensorBoard scalars (see `tb_tag`)."""
        if not self.enabled:
            return
        for name, value in scalars.items():
            self._tb.add_scalar(tb_tag(name), value, step)
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def write_hparams(self, hparams: dict, metrics: dict[str, float], step: int) -> None:
        """Records the run's hyper-parameters and final metrics (TensorBoard's HParams view).

        Written with tensorboardX `add_hparams` into `tb/hparams`.
        """
        if not self.enabled or not metrics:
            return
        scores = {tb_tag(k): float(v) for k, v in metrics.items()}
        self._tb.add_hparams(hparams, scores, name="hparams", global_step=step)

    def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
        """Writes an (H, W, 3) uint8 image."""
        if self.enabled:
            self._tb.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        """Flushes and closes the sinks."""
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


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
