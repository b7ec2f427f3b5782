"""The one impure loop: init or restore, dispatch chunks of steps, eval, log, checkpoint.

Its parts live beside it: the input checks (`preflight`), the chunk schedule
(`chunking`), the runner of device-sampled chunks (`device_run`), the records written
between chunks (`reporting`) and the validation (`monitor`).
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
from absl import logging

from maml_dist import (
    checkpointing,
    cpu_threads,
    meta_objective,
    meta_update,
    nonfinite,
    parallel,
    recorded_split,
    recovery,
    storage,
)
from maml_dist import state as state_lib
from maml_dist.checkpointing import Checkpointer
from maml_dist.chunking import chunk_bounds, chunk_end, is_multiple
from maml_dist.device_run import DeviceRun
from maml_dist.feed import HostFeed
from maml_dist.metrics import MetricWriter
from maml_dist.monitor import start_monitor
from maml_dist.preemption import Preemption
from maml_dist.preflight import check_inputs
from maml_dist.reporting import Clock, Drawings, hparams, report


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, devices: list | None = None
) -> state_lib.TrainState:
    """Meta-trains per `config` in `workdir`, resuming from its latest checkpoint.

    Args:
        config: a config like those of `configs/`.
        workdir: the run directory (see README, "The workdir").
        devices: devices of the task mesh; default all devices of all processes.

    Returns:
        The final TrainState.

    Raises:
        nonfinite.NonFiniteError: when the run meets more non-finite meta-steps in a row
            than its mode allows, or resumes from a checkpoint saved after as many (then
            before any step, and before its config or records are written).
    """
    # The command line has applied it already; a Python caller whose JAX has started
    # gets a warning (maml_dist.cpu_threads).
    cpu_threads.apply(config.get("cpu_threads", 0), strict=False)
    devices = jax.devices() if devices is None else devices
    problem, split_record = check_inputs(config, workdir, len(devices))
    mesh = parallel.make_mesh(devices)
    tx, schedule = state_lib.make_meta_optimizer(config)
    replicated = parallel.replicated(mesh)
    spec = meta_objective.meta_batch_spec(config, problem)
    train_step = meta_update.make_train_step(
        parallel.make_meta_grad_fn(spec, mesh), tx, nonfinite.limit(config)
    )
    init = (problem.model, problem.family.example_input(), tx, config.seed, problem.algorithm)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), config.max_to_keep)
    run = None
    if problem.sample_fn is not None:
        # Starts compiling the steps' program now, beside everything below (unless the
        # run is over already: a finished run resumed only writes its final records).
        latest = ckpt.latest_step()
        ahead = latest is None or latest < config.num_steps
        abstract = state_lib.abstract_state(*init, replicated) if ahead else None
        run = DeviceRun(config, problem, spec, mesh, train_step, abstract)
    state = state_lib.init_state(*init, replicated)
    state = recovery.resume(ckpt, state)
    step, in_row = (int(x) for x in jax.device_get((state.step, state.nonfinite_in_row)))
    if step < config.num_steps:  # a finished run resumed only writes its final records
        try:
            nonfinite.check_resumed(config, step, in_row, ckpt.directory)
        except nonfinite.NonFiniteError:
            _close_after_stop(ckpt)
            raise
    try:
        # A write that fails (a full disk, no permission) stops the run here, in one line.
        with checkpointing.quiet_closed_loop():
            state = _train(
                config, workdir, problem, split_record, mesh, train_step, run, schedule, ckpt, state
            )
    except storage.WriteError as e:
        _close_after_stop(ckpt)
        raise e.advised(storage.advice(ckpt.finished_steps(), ckpt.directory)) from e
    return state


def _close_after_stop(*sinks) -> None:
    """Closes `sinks` after the run stopped; what fails in closing them is warned of only.

    The error that stopped the run is the one reported, and every sink is closed whatever
    the others do: a disk that is full for one write is usually full for the next, and a
    validation image drawn from a broken device fails like the step that stopped the run.
    """
    for sink in sinks:
        try:
            sink.close()
        except Exception as e:  # logged; the error that stopped the run is raised
            logging.warning("also failed: %s", e)


def _train(config, workdir, problem, split_record, mesh, train_step, run, schedule, ckpt, state):
    """The loop and the writes around it (see `train_and_evaluate`).

    `run` is the `DeviceRun` of a family sampled on the devices; None for host feeds.
    """
    is_main = jax.process_index() == 0
    replicated = parallel.replicated(mesh)
    step = int(jax.device_get(state.step))
    if is_main:
        storage.write_text(
            os.path.join(workdir, "config.json"), config.to_json(indent=2), "the config"
        )
        if split_record is not None and recorded_split.read(workdir) is None:
            with storage.writing("the class split", recorded_split.path(workdir)):
                recorded_split.write(workdir, split_record)
    writer = MetricWriter(workdir, is_main, resume_step=step)
    drawings = Drawings(writer)
    after = None
    if isinstance(run, DeviceRun):
        # Beside the steps' compile; the validation starts after it, on the core it frees
        # (and `shorter` must be resolved before anything waits on it).
        run.compile_sampler()
        after = run.shorter
    monitor = start_monitor(config, problem, replicated, state.meta_params, after)

    layout = meta_objective.TaskLayout(config.meta_batch_size, mesh.shape[parallel.AXIS])
    feed = None
    if run is None:
        # Chunks are capped so a chunk's images stay a few MB; the feed builds them ahead.
        sampler = problem.family.episodes("train", config.shots, config.num_query)
        bounds = chunk_bounds(step, config, config.host_chunk_steps)
        workers = config.get("host_workers", 1)
        feed = HostFeed(sampler, config.seed, mesh, layout.per_device, bounds, workers=workers)
        run = meta_update.make_multi_step_over(train_step)
    logging.info(
        "Training %s with %s for %d steps on %d device(s): meta-batch %d (%d per device, "
        "%d padded).",
        config.task,
        config.algorithm,
        config.num_steps,
        layout.num_devices,
        config.meta_batch_size,
        layout.per_device,
        layout.padded_size - config.meta_batch_size,
    )

    clock = Clock(step, feed)
    try:
        with Preemption() as preemption:
            state, last_eval = _loop(
                config,
                state,
                step,
                run,
                feed,
                clock,
                writer,
                drawings,
                schedule,
                ckpt,
                monitor,
                preemption,
            )
        started = time.perf_counter()
        ckpt.close()  # orbax writes in the background; this waits for the last write
        logging.info("checkpoint writes finished after %.3f s more", time.perf_counter() - started)
        step = int(jax.device_get(state.step))
        if preemption.signal is not None:
            logging.warning(
                "stopped by %s at step %d of %d with a checkpoint there; the same command resumes",
                preemption.name,
                step,
                config.num_steps,
            )
        else:
            # TensorBoard's HParams view compares runs by their config and final validation.
            writer.write_hparams(hparams(config), last_eval, step=step)
        try:
            drawings.close()
        finally:
            writer.close()
        # Raises a failure to build it where no chunk ran (a finished run resumed).
        monitor.result()
    except Exception as e:
        if jax.process_count() > 1 and isinstance(e, jax.errors.JaxRuntimeError):
            # A lost peer: the command line stops every process; closing the checkpointer
            # here would wait on the dead peer in orbax's barrier.
            raise
        # A stopped run (non-finite steps, a failed write, a failed image): finished saves
        # stay and the records of the chunks run are flushed.
        _close_after_stop(ckpt, drawings, writer)
        raise
    finally:
        if feed is not None:
            feed.close()
    return state


def _loop(
    config, state, step, run, feed, clock, writer, drawings, schedule, ckpt, monitor, preemption
):
    """Dispatches the chunks of steps; between them logs, evaluates and checkpoints.

    Stops early, with a checkpoint at the step reached, once `preemption` says so.

    Returns:
        (the final state, the last validation scalars: {} if none ran).

    Raises:
        nonfinite.NonFiniteError: when the run met more non-finite steps than its mode
            allows; no checkpoint is written from that chunk on.
    """
    is_main = jax.process_index() == 0
    pending, last_eval, first = None, {}, True
    watch = nonfinite.Watch(config, ckpt, int(jax.device_get(state.skipped_steps)))
    while step < config.num_steps:
        if first:
            if feed is not None:  # `DeviceRun` started its compile long before
                logging.info("compiling the meta-step...")
            started = time.perf_counter()
        if feed is None:
            end = chunk_end(step, config)
            state, metrics = run(state, end - step)
        else:
            start, end, batches = feed.take()
            assert start == step, (start, step)  # the feed follows the same schedule
            state, metrics = run(state, batches)
        if first:
            # The first call compiles, then runs; its time is mostly the compile.
            jax.block_until_ready(metrics)
            logging.info(
                "compiled the meta-step and ran steps %d-%d in %.1f s",
                step + 1,
                end,
                time.perf_counter() - started,
            )
            first = False
        if monitor.done():
            # The validation is built beside the compile and the first chunks: a failure
            # there stops the run at the chunk it shows at, not at the first validation.
            monitor.result()
        if pending is not None:
            # Blocks on the previous chunk only: at most two chunks are ever in flight
            # (README trap 2), and the host logs while the device computes.
            jax.block_until_ready(pending[2])
            watch.check(*pending[:3])
            report(writer, clock, config, schedule, *pending[1:])
        drawings.check()
        extra = {}
        stop = preemption.requested()
        checkpoint_now = stop or is_multiple(end, config.checkpoint_every, config)
        eval_now = is_multiple(end, config.eval_every, config)
        if checkpoint_now or eval_now:
            # The chunk's own compute counts as training; only what follows is excluded.
            jax.block_until_ready(state)
            # A stopped run's state is frozen at its last good step, but is never saved.
            watch.check(step, end, metrics)
        with clock.paused():
            # The two timings below are logged so a benchmark can split the run's wall
            # time into its parts from the log alone (scripts/benchmark.py).
            if eval_now:
                started = time.perf_counter()
                extra = last_eval = monitor.result().scalars(state.meta_params)
                draw = monitor.result().picture(state.meta_params, render=is_main)
                if draw is not None:
                    drawings.submit(end, "eval/adaptation", draw)
                logging.info("validated at step %d in %.3f s", end, time.perf_counter() - started)
        if checkpoint_now:
            # This chunk's record goes to disk before its checkpoint is started, so no
            # checkpoint ever exists without the records up to its step (a kill -9 right
            # after a save would otherwise lose the record of the saved step for good).
            report(writer, clock, config, schedule, end, metrics, extra)
            with clock.paused():
                started = time.perf_counter()
                # Its validation image too: a resume from this step would not draw it again.
                drawings.wait()
                ckpt.save(end, state, force=stop or end == config.num_steps)
                logging.info(
                    "checkpoint of step %d started in %.3f s", end, time.perf_counter() - started
                )
            pending = None
        else:
            pending = (step, end, metrics, extra)
        step = end
        if stop:
            break
    if pending is not None:
        watch.check(*pending[:3])
        report(writer, clock, config, schedule, *pending[1:])
    return state, last_eval
