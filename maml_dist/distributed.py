"""Multi-process start-up: `jax.distributed.initialize`, explicit or auto-detected.

Must run before anything touches a JAX backend (DESIGN.md §5.4).
"""

from __future__ import annotations

import os
import time

import jax

from maml_dist.checks import UserInputError


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
    return True


def lost_processes(wait_s: float) -> list[int] | None:
    """Processes the coordination service has declared dead, waiting up to `wait_s` for it.

    A dead peer usually shows first as a failed collective; the service names it only once
    its heartbeats have been missing for the heartbeat timeout, hence the wait.

    Returns:
        The lost process indices; [] if none was declared within `wait_s`; None if the
        service cannot be asked (e.g. process 0, which hosts it, is the one that died).
    """
    # jax exposes no public liveness query; the runtime client has one.
    from jax._src import distributed as jax_distributed

    client = jax_distributed.global_state.client
    if client is None:
        return None
    ids = list(range(jax.process_count()))
    deadline = time.monotonic() + wait_s
    while True:
        try:
            live = set(client.get_live_nodes(ids))
        except Exception:  # the service itself is gone: nothing more can be learnt
            return None
        lost = [i for i in ids if i not in live]
        if lost or time.monotonic() > deadline:
            return lost
        time.sleep(0.5)
