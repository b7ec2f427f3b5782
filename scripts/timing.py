"""Shared by the benchmarks: time several jitted multi-step programs side by side."""

from __future__ import annotations

import time


def interleaved_ms_per_step(runs: dict, chunk: int, reps: int) -> dict:
    """Median ms per step of each `run(state, chunk)`, repetitions interleaved across runs.

    Interleaving lets every variant see the same machine load, so ratios are fair on a
    shared, noisy machine.

    Args:
        runs: key -> (run, state), where `run(state, n) -> (state, metrics)` is compiled
            for `chunk` already (one warm-up call done).
        chunk: steps per timed call.
        reps: timed calls per run.

    Returns:
        key -> median milliseconds per step.
    """
    import jax

    states = {k: state for k, (_, state) in runs.items()}
    times = {k: [] for k in runs}
    for _ in range(reps):
        for k, (run, _) in runs.items():
            t0 = time.perf_counter()
            states[k], metrics = run(states[k], chunk)
            jax.block_until_ready(metrics)
            times[k].append((time.perf_counter() - t0) / chunk)
    return {k: 1e3 * sorted(v)[len(v) // 2] for k, v in times.items()}


def warm(run, state, chunk: int):
    """Compiles and runs `run` once; returns the new state."""
    import jax

    state, _ = run(state, chunk)
    return jax.block_until_ready(state)
