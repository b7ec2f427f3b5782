"""Shared by the benchmarks: what every benchmark record says about where it ran.

The machine (device kind, platform, device and process counts), the versions of the
stack, the peak memory of the measuring process, XLA compile times as JAX reports them,
and a child process run under a hard deadline whose own peak RSS is known.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import os
import pathlib
import platform
import resource
import subprocess
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("jax", "jaxlib", "flax", "optax")
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def versions() -> dict:
    """Python's, the stack's and this project's versions (no JAX backend is started)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    # The imported package's own version, not an installed copy's metadata: the tree run
    # is the one measured.
    import maml_dist

    out["maml_dist"] = maml_dist.__version__
    out["maml_dist_commit"] = _git_commit()
    return out


def _git_commit() -> str | None:
    """HEAD of the tree measured, "+dirty" if it has changes; None outside a git checkout."""
    try:
        head = _git("rev-parse", "--short=12", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()


def environment() -> dict:
    """The devices this process sees and the versions; starts the JAX backend."""
    import jax

    device = jax.devices()[0]
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "versions": versions(),
    }


def peak_memory() -> dict:
    """This process's peak memory, from the device where it can tell, else the host.

    The first device's high-water mark where the backend keeps one (GPU, TPU); else the
    process's peak resident set size (CPU).
    """
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return {
            "peak_memory_bytes": int(stats["peak_bytes_in_use"]),
            "peak_memory_source": "device_peak_bytes_in_use",
        }
    return {"peak_memory_bytes": host_peak_rss(), "peak_memory_source": "host_peak_rss"}


def host_peak_rss() -> int:
    """Peak resident set size of this process in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextlib.contextmanager
def compile_times():
    """Yields a list that collects the seconds of every XLA compile inside the block.

    JAX reports each backend compile as a monitoring event; a hit in the persistent
    compilation cache is not a backend compile and adds nothing.
    """
    import jax.monitoring

    seconds: list[float] = []

    def on_event(event: str, duration: float, **_) -> None:
        if event == COMPILE_EVENT:
            seconds.append(duration)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        yield seconds
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)


@dataclasses.dataclass
class Finished:
    """A child process run by `run_bounded`.

    Attributes:
        returncode: its exit status (-9 when killed at the deadline).
        timed_out: whether the deadline killed it.
        started: time.time() just before it was started.
        wall_s: seconds from its start until it was reaped.
        peak_rss_bytes: its own peak resident set size (not its children's).
        stdout: path of its standard output.
        stderr: path of its standard error.
    """

    returncode: int
    timed_out: bool
    started: float
    wall_s: float
    peak_rss_bytes: int
    stdout: pathlib.Path
    stderr: pathlib.Path


def run_bounded(
    cmd: list[str], deadline_s: float, log_prefix: pathlib.Path, env: dict | None = None
) -> Finished:
    """Runs `cmd` from the repository root; SIGKILLs it if it outlives `deadline_s`.

    SIGKILL, not SIGTERM: after `jax.distributed.initialize` JAX catches SIGTERM, and a
    benchmark must never hang the machine it was lent. The child is reaped with `wait4`,
    which returns that child's own resource use, so its peak RSS is its own.

    Args:
        cmd: the command.
        deadline_s: seconds before it is killed.
        log_prefix: stdout goes to `<prefix>.out`, stderr to `<prefix>.err`.
        env: its environment (default this process's).
    """
    out, err = log_prefix.with_suffix(".out"), log_prefix.with_suffix(".err")
    with open(out, "w") as fo, open(err, "w") as fe:
        started = time.time()
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=env, cwd=ROOT)
    timed_out = False
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.time() - started > deadline_s:
                proc.kill()
                timed_out = True
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
    except BaseException:
        # Interrupted (Ctrl-C, the caller's own deadline): no orphan keeps the device.
        proc.kill()
        proc.wait()
        raise
    wall = time.time() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return Finished(proc.returncode, timed_out, started, wall, usage.ru_maxrss * 1024, out, err)
