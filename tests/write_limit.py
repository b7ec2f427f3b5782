"""Runs `maml_dist.train` with writes failing from a chosen moment, as on a full disk.

    python tests/write_limit.py checkpoint STEP BYTES -- <maml_dist.train flags>
    python tests/write_limit.py metrics STEP -- <maml_dist.train flags>

The limit is the process's RLIMIT_FSIZE with SIGXFSZ ignored: a write past it fails with
EFBIG ("File too large") in whatever wrote it (tensorstore's threads included), the way
ENOSPC fails on a full disk, so the trainer's real write paths are what fail.

- `checkpoint`: from the save of checkpoint STEP on, no file grows past BYTES (the
  checkpoint's array files are larger).
- `metrics`: once checkpoint STEP is written, no file grows past the size `metrics.jsonl`
  has then, so the next record is the first write that fails.

Only the moment is chosen here (by wrapping orbax's `CheckpointManager.save`); nothing of
maml_dist is changed.
"""

import os
import resource
import runpy
import signal
import sys

import orbax.checkpoint as ocp


def _limit(size: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))


def main(argv: list[str]) -> None:
    split = argv.index("--")
    mode, step, *rest = argv[1:split]
    step = int(step)
    train_args = argv[split + 1 :]
    workdir = next(a.split("=", 1)[1] for a in train_args if a.startswith("--workdir="))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    save = ocp.CheckpointManager.save

    def limited_save(self, at, *args, **kwargs):
        if mode == "checkpoint" and at >= step:
            _limit(int(rest[0]))
        saved = save(self, at, *args, **kwargs)
        if mode == "metrics" and at == step:
            self.wait_until_finished()
            _limit(os.path.getsize(os.path.join(workdir, "metrics.jsonl")))
        return saved

    ocp.CheckpointManager.save = limited_save
    sys.argv = ["maml_dist.train", *train_args]
    runpy.run_module("maml_dist.train", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv)
