"""Multi-process start-up: `jax.distributed.initialize`, explicit or auto-detected.

Must run before anything touches a JAX backend (README trap 4).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

import jax

from maml_dist.errors import UserInputError


def cluster_detected(environ: dict[str, str] | None = None) -> bool:
    """Whether we run as one of several processes of a cluster JAX can auto-configure.

    SLURM (`srun` with more than one task), Open MPI (`mpirun -n >1`) and multi-host TPU VMs
    (several worker hostnames) are recognised; one process on one machine is not.
    """
    env = os.environ if environ is None else environ

    def more_than_one(name: str) -> bool:
        try:
            return int(env.get(name, "1")) > 1
        except ValueError:
            return False

    if "SLURM_JOB_ID" in env and (more_than_one("SLURM_NTASKS") or more_than_one("SLURM_NPROCS")):
        return True
    if more_than_one("OMPI_COMM_WORLD_SIZE"):
        return True
    return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def initialize(
    coordinator_address: str | None,
    num_processes: int | None,
    process_id: int | None,
    heartbeat_timeout_s: int,
    initialization_timeout_s: int = 300,
) -> bool:
    """Starts the JAX distributed runtime when asked to or when a cluster is detected.

    Args:
        coordinator_address: "host:port" of process 0, or None.
        num_processes: total number of processes, or None.
        process_id: this process's index in [0, num_processes), or None.
        heartbeat_timeout_s: a process silent this long is declared dead, so the others
            stop instead of waiting on it forever.
        initialization_timeout_s: how long to wait for all processes to connect.

    Returns:
        Whether the distributed runtime was started.

    Raises:
        UserInputError: if only some of the three explicit settings are given, or they
            are out of range.
    """
    explicit = (coordinator_address, num_processes, process_id)
    given = [x is not None for x in explicit]
    if any(given) and not all(given):
        raise UserInputError(
            "pass all of --coordinator_address, --num_processes and --process_id, or none of "
            "them (on SLURM and TPU pods none are needed)"
        )
    if all(given):
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise UserInputError(
                f"--process_id={process_id} must be in [0, --num_processes={num_processes})"
            )
        kwargs = dict(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    elif cluster_detected():
        kwargs = {}
    else:
        return False
    jax.distributed.initialize(
        **kwargs,
        heartbeat_timeout_seconds=heartbeat_timeout_s,
        initialization_timeout=initialization_timeout_s,
    )
    register_process()
    return True


_PROCESS_KEY = "maml_dist/process/{}"


def _client():
    # jax exposes no public liveness query or key-value store; its runtime client has both.
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.client


def register_process() -> None:
    """Publishes this process's host and pid, so peers on the same host can check on it."""
    client = _client()
    if client is not None:
        client.key_value_set(
            _PROCESS_KEY.format(jax.process_index()), f"{socket.gethostname()} {os.getpid()}"
        )


def _dead_local_peers() -> list[int]:
    """Peers on this host whose process no longer exists (known at once, no heartbeat wait)."""
    client, host, dead = _client(), socket.gethostname(), []
    for i in range(jax.process_count()):
        if i == jax.process_index():
            continue
        try:
            peer_host, pid = client.key_value_try_get(_PROCESS_KEY.format(i)).split()
        except Exception:  # not registered, or the service is gone
            continue
        if peer_host == host and not _process_alive(int(pid)):
            dead.append(i)
    return dead


def _process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, killed but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # no procfs (macOS): trust kill(0)
        return True


def _lost_by_service() -> list[int] | None:
    """Processes the coordination service no longer hears from; None if it is unreachable.

    GetAliveTasks waits for every live process to ask, so only call it where all survivors
    do (after a failed collective), never from a lone watchdog.
    """
    ids = list(range(jax.process_count()))
    try:
        live = set(_client().get_live_nodes(ids))
    except Exception:  # the service itself is gone (process 0 died)
        return None
    return [i for i in ids if i not in live]


class PeerWatch:
    """Notices a lost peer process and stops this one with one line naming it.

    A dead peer shows as a failed collective, or as a collective that never completes. A
    daemon thread checks the peers on this host by pid once a second; after a failed
    collective the coordination service is asked too. A remote peer is declared dead by the
    service after the heartbeat timeout, and JAX's runtime may then terminate this process
    first, with its own message naming the task. Either way the survivors exit non-zero in
    bounded time.
    """

    def __init__(self, prog: str, interval_s: float = 1.0):
        """Starts the watching thread for entry point `prog`."""
        self.prog = prog
        self._lock = threading.Lock()
        self._closed = threading.Event()
        thread = threading.Thread(target=self._watch, args=(interval_s,), daemon=True)
        thread.start()

    def close(self) -> None:
        """Stops watching: from here on, peers finishing and exiting is normal."""
        self._closed.set()

    def _watch(self, interval_s: float) -> None:
        while not self._closed.wait(interval_s):
            lost = _dead_local_peers()
            if lost and not self._closed.is_set():
                self.stop(lost, "its process is gone")

    def stop(self, lost: list[int] | None, reason: str) -> None:
        """Prints the one-line error and exits at once (skipping the shutdown barrier)."""
        with self._lock:
            if lost:
                what = f"lost process {', '.join(map(str, lost))} of {jax.process_count()}"
            elif lost is None:
                what = "lost the coordinator (process 0) or the connection to it"
            else:
                what = "a collective with the other processes failed"
            print(
                f"{self.prog}: error: {what}; process {jax.process_index()} stops ({reason})",
                file=sys.stderr,
                flush=True,
            )
            # A normal exit would wait in jax.distributed's shutdown barrier for the dead
            # peer, then abort with a C++ stack trace.
            os._exit(1)

    def stop_after_failed_collective(self, error: Exception, wait_s: float) -> None:
        """Names the lost peer of a failed collective (waiting up to `wait_s`), then stops."""
        deadline = time.monotonic() + wait_s
        lost = _dead_local_peers() or _lost_by_service()
        while lost == [] and time.monotonic() < deadline:
            time.sleep(0.5)
            lost = _dead_local_peers() or _lost_by_service()
        self.stop(lost, str(error).strip().splitlines()[0][:300])
