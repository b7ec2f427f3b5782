"""The chunk schedule: the steps at which the host acts between runs of scanned steps."""

from __future__ import annotations

import ml_collections


def chunk_end(step: int, config: ml_collections.ConfigDict) -> int:
    """The next step at which the host must act (log, eval, checkpoint or finish)."""
    intervals = (config.log_every, config.eval_every, config.checkpoint_every)
    return min([(step // k + 1) * k for k in intervals] + [config.num_steps])


def chunk_bounds(step: int, config: ml_collections.ConfigDict, max_len: int | None = None):
    """Yields (start, end) of every chunk from `step` on; chunks hold at most `max_len` steps."""
    while step < config.num_steps:
        end = chunk_end(step, config)
        if max_len is not None:
            end = min(end, step + max_len)
        yield step, end
        step = end


def is_multiple(step: int, every: int, config: ml_collections.ConfigDict) -> bool:
    """Whether an interval of `every` steps ends at `step` (the run's last step ends all)."""
    return step % every == 0 or step == config.num_steps
