"""Splits a `maml_dist.train` process's wall time into its parts, from its log alone.

The trainer logs with absl (a microsecond time stamp on every line) when it starts
compiling the meta-step, how long each validation and each checkpoint start took, and
how long it waited for the last checkpoint write; with `JAX_LOG_COMPILES=1` in its
environment JAX logs when each XLA compile finishes and whether it came from the
persistent compilation cache. Between those marks the parts are contiguous, so they add
up to the process's wall time:

    startup      process start -> "compiling the meta-step..." (interpreter, imports,
                 JAX runtime, model init, checkpoint restore, the small init compiles)
    compile      -> the meta-step's XLA compile finished (tracing, lowering, compiling
                 or loading it from the cache)
    steps        the step loop less the two parts below (the first chunk included)
    eval         validations, their first compile included
    checkpoint   time the loop waited to start each save, plus the wait for the last
                 write at the end (orbax writes in the background, beside the steps)
    shutdown     -> process exit (the hparams summary, writers, interpreter exit)
"""

from __future__ import annotations

import datetime
import re
import statistics

LINE = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6}) +\d+ [^\]]+\] (.*)$")
COMPILE_START = "compiling the meta-step..."
XLA_DONE = re.compile(r"Finished XLA compilation of (\S+) in ([\d.e-]+) sec")
CACHE_HIT = "Persistent compilation cache hit"
# How JAX names the meta-step's program in its compile and cache-hit lines.
STEP_PROGRAM, STEP_CACHE_KEY = "jit(run)", "'jit_run'"
EVAL = re.compile(r"validated at step \d+ in ([\d.]+) s")
CKPT = re.compile(r"checkpoint of step \d+ started in ([\d.]+) s")
CKPT_WAIT = re.compile(r"checkpoint writes finished after ([\d.]+) s more")


def lines(text: str, started: float) -> list[tuple[float, str]]:
    """(epoch seconds, message) of every absl line of `text`.

    absl stamps local time without the year; the year is the process start's (a run
    across New Year's night would be off by one).
    """
    year = datetime.datetime.fromtimestamp(started).year
    out = []
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            mo, d, h, mi, s, us = (int(g) for g in m.groups()[:6])
            t = datetime.datetime(year, mo, d, h, mi, s, us).timestamp()
            out.append((t, m.group(7)))
    return out


def parts(text: str, started: float, wall_s: float) -> dict:
    """The wall-time parts of one trainer process (see the module docstring).

    Args:
        text: the process's stderr (its absl log), with JAX_LOG_COMPILES=1.
        started: time.time() when the process was started.
        wall_s: seconds until it exited.

    Returns:
        startup_s, import_s (start to the first log line, part of startup), compile_s,
        steps_s, eval_s, checkpoint_s, shutdown_s, compile_cache_hit (the meta-step's),
        xla_compile_s_total (every XLA compile the log reports), evals and checkpoints
        (how many). Raises ValueError when a mark is missing (the log changed).
    """
    log = lines(text, started)
    if not log:
        raise ValueError("no absl log lines")
    begin = _first(log, lambda m: m == COMPILE_START, "the compile start")
    # The meta-step's program is the trainer's jitted `run` (`meta_update.make_multi_step`);
    # since 0.6 the validation programs compile beside it, in another thread.
    done = _first(log[begin:], _is_step_compile, "the compile end")
    done += begin
    wait = _first(log, lambda m: CKPT_WAIT.match(m) is not None, "the final checkpoint wait")
    t_compile, t_compiled, t_waited = log[begin][0], log[done][0], log[wait][0]
    wait_s = float(CKPT_WAIT.match(log[wait][1]).group(1))
    evals = [float(m.group(1)) for _, msg in log if (m := EVAL.match(msg))]
    saves = [float(m.group(1)) for _, msg in log if (m := CKPT.match(msg))]
    loop_s = t_waited - wait_s - t_compiled
    return {
        "startup_s": t_compile - started,
        "import_s": log[0][0] - started,
        "compile_s": t_compiled - t_compile,
        "steps_s": loop_s - sum(evals) - sum(saves),
        "eval_s": sum(evals),
        "checkpoint_s": sum(saves) + wait_s,
        "shutdown_s": started + wall_s - t_waited,
        "compile_cache_hit": any(
            CACHE_HIT in msg and STEP_CACHE_KEY in msg for _, msg in log[begin:done]
        ),
        "xla_compile_s_total": sum(
            float(m.group(2)) for _, msg in log if (m := XLA_DONE.match(msg))
        ),
        "evals": len(evals),
        "checkpoints": len(saves),
    }


def _is_step_compile(msg: str) -> bool:
    m = XLA_DONE.match(msg)
    return m is not None and m.group(1) == STEP_PROGRAM


def _first(log, match, what: str) -> int:
    for i, (_, msg) in enumerate(log):
        if match(msg):
            return i
    raise ValueError(f"the log has no line marking {what}")


def steady_rates(records: list[dict]) -> dict:
    """Median steps/s and tasks/s of the trainer's logged intervals after the first.

    The trainer's own clock leaves validations and checkpoints out; the first interval
    holds the compile, so it is left out too.
    """
    steady = [r for r in records[1:] if "sec_per_step" in r]
    if not steady:
        return {"steps_per_sec": None, "tasks_per_sec": None}
    return {
        "steps_per_sec": statistics.median(1 / r["sec_per_step"] for r in steady),
        "tasks_per_sec": statistics.median(r["tasks_per_sec"] for r in steady),
    }
