"""The one impure loop: init or restore, dispatch chunks of steps, eval, log, checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from maml_dist import (
    checkpointing,
    checks,
    cpu_threads,
    nonfinite,
    parallel,
    recorded_split,
    recovery,
    storage,
)
from maml_dist import state as state_lib
from maml_dist.checkpointing import Checkpointer
from maml_dist.feed import HostFeed
from maml_dist.metrics import MetricWriter
from maml_dist.monitor import Monitor
from maml_dist.preemption import Preemption
from maml_dist.problem import Problem, make_problem


def check_inputs(
    config: ml_collections.ConfigDict, workdir: str, num_devices: int
) -> tuple[Problem, dict | None]:
    """All user-input checks, before any compile or any write to the workdir's run files.

    Returns:
        The config's Problem (with its data read, for host-sampled families), and the
        class split's record for `DIR/split.json` (None for families without classes).

    Raises:
        checks.UserInputError: with one sentence naming the problem and the fix.
    """
    checks.validate_config(config)
    problem = make_problem(config)  # unknown task names fail here
    if problem.family.host_sampled:
        # Reads the data and builds the samplers, so a bad split or a data set too small
        # for the episodes fails here rather than after the workdir is written.
        for part in ("train", "validation"):
            problem.family.episodes(part, config.shots, config.num_query)
    if problem.device_episodes is not None:
        checks.check_fits_devices(problem.device_episodes.tables.nbytes, jax.local_devices())
    record = None
    if problem.family.kind == "classification":
        record = problem.family.split_record()
        recorded_split.check(
            workdir,
            record,
            config.data_dir,
            "pass the data this run was trained on (--config.data_dir), or start a new --workdir",
        )
    checks.check_meta_batch(config.meta_batch_size, num_devices, config.pad_meta_batch)
    per_vmap = config.get("tasks_per_vmap", 0)
    if parallel.resolve_batching(config.task_batching) == "vmap":
        checks.check_tasks_per_vmap(
            per_vmap, parallel.TaskLayout(config.meta_batch_size, num_devices).per_device
        )
    elif per_vmap:
        # Only "auto" gets here (validate_config refuses loop/unroll with groups): a config
        # written for accelerators, run where tasks go one at a time anyway.
        logging.warning(
            "config.tasks_per_vmap=%d has no effect on %s: task_batching 'auto' runs a "
            "device's tasks one at a time there",
            per_vmap,
            jax.default_backend(),
        )
    checks.check_workdir_writable(workdir)
    saved = os.path.join(workdir, "config.json")
    if os.path.exists(saved):
        with open(saved) as f:
            saved_config = json.load(f)
        checks.check_run_format(saved_config, workdir)
        checks.check_resume_compatible(saved_config, config)
    return problem, record


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


def _is_multiple(step: int, every: int, config) -> bool:
    return step % every == 0 or step == config.num_steps


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
    spec = parallel.meta_batch_spec(config, problem)
    train_step = parallel.make_train_step(
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
        run = _DeviceRun(config, problem, spec, mesh, train_step, abstract)
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

    `run` is the `_DeviceRun` of a family sampled on the devices; None for host feeds.
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
    drawings = _Drawings(writer)
    after = None
    if isinstance(run, _DeviceRun):
        # Beside the steps' compile; the validation starts after it, on the core it frees
        # (and `shorter` must be resolved before anything waits on it).
        run.compile_sampler()
        after = run.shorter
    monitor = _start_monitor(config, problem, replicated, state.meta_params, after)

    layout = parallel.TaskLayout(config.meta_batch_size, mesh.shape[parallel.AXIS])
    feed = None
    if run is None:
        # Chunks are capped so a chunk's images stay a few MB; the feed builds them ahead.
        sampler = problem.family.episodes("train", config.shots, config.num_query)
        bounds = chunk_bounds(step, config, config.host_chunk_steps)
        workers = config.get("host_workers", 1)
        feed = HostFeed(sampler, config.seed, mesh, layout.per_device, bounds, workers=workers)
        run = parallel.make_multi_step_over(train_step)
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

    clock = _Clock(step, feed)
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
            writer.write_hparams(_hparams(config), last_eval, step=step)
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


class _DeviceRun:
    """`(state, n) -> (state, metrics)`: n meta-steps of a family sampled on the devices.

    The programs of the usual chunk length (`chunk_end` from step 0; every chunk but a
    resumed run's first and the run's last, where the intervals are multiples of one
    another) are compiled ahead, from the state's shapes alone. The steps' program starts
    compiling in a thread when this is made, while the caller initialises or restores the
    state. Where a chunk's tasks are sampled ahead (`_chunk_sampler`), sampling is a
    second program (the sinusoid paper run's compile in 0.5 s and 1.1 s, as one program
    in 1.65 s), which the caller compiles after the state (`compile_sampler`): two
    compiles at a time on two cores, not three with the state's initialisation. The
    sinusoid paper run's first chunk ended 0.2 to 0.6 s sooner (four pairs of runs;
    README, "The trainer against a hand-written loop", version 0.8). Other lengths
    compile on first use. (A resumed run whose first chunk has another length compiles
    the sampler before it too: ~0.5 s once, for the chunks after it.)

    `shorter` is the sampler's compile (set by `compile_sampler`), or the only one: a
    core is free after it.

    A compile is local to its process (nothing runs), so this holds on any number of
    devices and processes. JAX settings a caller scoped to its own thread
    (`jax.enable_x64`, ...) reach the sampler's compile but not the steps'; the trainer
    sets none.
    """

    def __init__(self, config, problem: Problem, spec, mesh, train_step, abstract_state):
        """`abstract_state`: the state's shapes and shardings; None compiles nothing ahead."""
        sampler = _chunk_sampler(config, problem, spec, mesh)
        self.data = None
        if problem.device_episodes is not None:
            self.data = parallel.put_replicated(problem.device_episodes.tables, mesh)
            logging.info(
                "Episodes are drawn on the devices from %d images (%.1f MiB on each device).",
                self.data.images.shape[0],
                problem.device_episodes.tables.nbytes / 2**20,
            )
        self.length = n = chunk_end(0, config)
        self._sampler_args = None
        logging.info("compiling the meta-step...")
        if sampler is None:
            self.sample, self.run = None, parallel.make_multi_step(train_step)
        else:
            self.sample = parallel.make_chunk_sample(sampler)
            self.run = parallel.make_multi_step_over(train_step)
        if abstract_state is None:  # nothing to compile ahead
            self.length, self.shorter = None, Future()
            self.shorter.set_result(None)
            return
        pool = ThreadPoolExecutor(1, thread_name_prefix="compile")
        if sampler is None:
            self.compiled = pool.submit(
                lambda: self.run.lower(abstract_state, n, self.data).compile()
            )
            self.shorter = self.compiled
        else:
            sharding = NamedSharding(mesh, P(None, parallel.AXIS))
            batches = jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                jax.eval_shape(lambda: sampler(jnp.arange(n), self.data)),
            )
            run = pool.submit(lambda: self.run.lower(abstract_state, batches).compile())
            self._sampler_args = (abstract_state.step, n)
            self.shorter = Future()  # set by `compile_sampler`
            self.compiled = _Both(self.shorter, run)
        pool.shutdown(wait=False)  # the thread ends with the compile

    def compile_sampler(self) -> None:
        """Compiles the chunk sampler ahead, in this thread, unless done or not needed.

        The trainer calls it once the state is built, before the validation's thread
        (which waits on `shorter`) starts; the first chunk of the usual length would
        otherwise. A failed compile is raised by that chunk, as the steps' would be.
        """
        args, self._sampler_args = self._sampler_args, None
        if args is None:
            return
        try:
            compiled = self.sample.lower(*args).compile()
        except BaseException as e:
            # Raised by `compiled.result()` at the first chunk of the usual length;
            # `shorter` is resolved either way (Ctrl-C included), so no waiter hangs.
            self.shorter.set_exception(e)
            if not isinstance(e, Exception):
                raise
            return
        self.shorter.set_result(compiled)

    def __call__(self, state, n: int):
        """Runs n steps from `state` (donated); raises what a compile raised."""
        if self.sample is None:
            if n == self.length:
                return self.compiled.result()(state, self.data)
            return self.run(state, n, self.data)
        if n == self.length:
            self.compile_sampler()
            sample, run = self.compiled.result()
            return run(state, sample(state.step))
        return self.run(state, self.sample(state.step, n))


class _Both:
    """Two futures as one: `result()` is both results, `done()` once both are."""

    def __init__(self, *futures: Future):
        self.futures = futures

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def result(self) -> tuple:
        return tuple(f.result() for f in self.futures)


def _start_monitor(config, problem, replicated, meta_params, after) -> Future:
    """The run's `Monitor`, as a future; in one process, built in a thread.

    Building it samples the fixed validation tasks, and its first use compiles the
    validation programs: about 1.5 s of the sinusoid paper run (README, "The trainer
    against a hand-written loop") that a thread does once `after` (the sampler's
    compile, or the only one) is done, beside the steps' compile and the first chunks:
    begun beside all of them, on two cores, it made the meta-step's compile, the run's
    critical path, 0.6 to 0.9 s longer. The thread scores a copy
    of the initial meta-parameters on one chunk of the tasks to compile those programs
    (the state's own are donated to the first chunk). The loop checks at every chunk,
    without waiting, whether it failed.

    It is built here, in order, with several processes or several accelerators: its
    programs run over the mesh, and collectives of two programs running at once could be
    ordered differently on different devices. JAX settings a caller scoped to its own
    thread (`jax.enable_x64`, ...) do not reach the thread; the trainer sets none.
    """
    num_devices = len(replicated.mesh.devices.flat)
    if jax.process_count() > 1 or (jax.default_backend() != "cpu" and num_devices > 1):
        done = Future()
        done.set_result(Monitor(config, problem, replicated))
        return done
    # A host copy: copying on the device would compile a program per parameter shape.
    params = jax.device_get(meta_params)

    def build() -> Monitor:
        if after is not None:
            with contextlib.suppress(Exception):  # the loop raises a failed compile itself
                after.result()
        monitor = Monitor(config, problem, replicated)
        monitor.warm_up(jax.device_put(params, replicated))
        return monitor

    pool = ThreadPoolExecutor(1, thread_name_prefix="monitor")
    future = pool.submit(build)
    pool.shutdown(wait=False)  # the thread ends with `build`; nobody waits for it here
    return future


def _chunk_sampler(config, problem, spec, mesh):
    """`parallel.make_chunk_sampler`'s sampler where a chunk's tasks are small, else None.

    Families that draw from tables (image episodes) sample inside each step: their tasks
    are large and their steps long, so sampling ahead would cost memory and save little.
    """
    if problem.device_episodes is not None:
        return None
    # A chunk never holds more than log_every steps (`chunk_end`). The whole meta-batch's
    # size decides, not a device's share: sampling ahead changes the rounding, and the
    # same run must make the same choice on any device count ("loop" + "ordered").
    if parallel.chunk_task_bytes(spec, config.log_every) > parallel.PRESAMPLE_MAX_BYTES:
        return None
    return parallel.make_chunk_sampler(spec, mesh)


def _hparams(config: ml_collections.ConfigDict) -> dict:
    """The config as flat `a.b` hyper-parameters of the types TensorBoard shows."""
    flat = {}

    def add(prefix, tree):
        for key, value in tree.items():
            if isinstance(value, dict):
                add(f"{prefix}{key}.", value)
            elif isinstance(value, bool | int | float | str):
                flat[f"{prefix}{key}"] = value
            else:
                flat[f"{prefix}{key}"] = json.dumps(value)

    add("", json.loads(config.to_json()))
    return flat


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
            if feed is not None:  # `_DeviceRun` started its compile long before
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
            _report(writer, clock, config, schedule, *pending[1:])
        drawings.check()
        extra = {}
        stop = preemption.requested()
        checkpoint_now = stop or _is_multiple(end, config.checkpoint_every, config)
        eval_now = _is_multiple(end, config.eval_every, config)
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
            _report(writer, clock, config, schedule, end, metrics, extra)
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
        _report(writer, clock, config, schedule, *pending[1:])
    return state, last_eval


class _Drawings:
    """The validation's TensorBoard images, drawn in a thread, one at a time.

    Drawing the sinusoid figure takes ~35 ms of matplotlib (0.5 s of the paper run's 14
    validations) that the thread does beside the next chunk. The image is written from
    the loop's thread, at the first chunk boundary after it is drawn (the event file
    has one writer); a failed drawing is raised there, or at `close`, never lost.
    """

    def __init__(self, writer: MetricWriter):
        self.writer = writer
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="draw")
        self.pending: tuple[int, str, Future] | None = None

    def submit(self, step: int, tag: str, draw) -> None:
        """Draws `draw()`, an (H, W, 3) image, for `tag` at `step`, once the last one is done."""
        self.wait()
        self.pending = (step, tag, self.pool.submit(draw))

    def check(self) -> None:
        """Writes the image in flight if it is drawn (raises what drawing it raised)."""
        if self.pending is not None and self.pending[2].done():
            self.wait()

    def wait(self) -> None:
        """Waits for the image in flight and writes it."""
        pending, self.pending = self.pending, None
        if pending is not None:
            step, tag, image = pending
            self.writer.write_image(step, tag, image.result())

    def close(self) -> None:
        """Writes the last image and ends the thread."""
        try:
            self.wait()
        finally:
            self.pool.shutdown()


class _Clock:
    """Training throughput, excluding time spent in eval and checkpointing."""

    def __init__(self, step: int, feed: HostFeed | None = None):
        self.feed = feed
        self.step = self.start = step
        self.time = self.started = time.perf_counter()
        self.excluded = 0.0

    @contextlib.contextmanager
    def paused(self):
        """Context in which elapsed time is not counted as training."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - t

    def lap(self, step: int) -> float:
        """Seconds of training since the previous lap, which ended at `self.step`."""
        now = time.perf_counter()
        seconds = max(now - self.time - self.excluded, 1e-9)
        self.step, self.time, self.excluded = step, now, 0.0
        return seconds


def _report(writer, clock, config, schedule, end, metrics, extra) -> None:
    """Writes the records of a finished chunk: the last step's metrics plus throughput."""
    if not (_is_multiple(end, config.log_every, config) or extra):
        return
    # nonfinite_in_row only steers the guard; skipped_steps is the reported count.
    metrics = {k: v for k, v in metrics.items() if k != "nonfinite_in_row"}
    last = {k: float(v[-1]) for k, v in jax.device_get(metrics).items()}
    steps = end - clock.step
    seconds = clock.lap(end)
    scalars = {
        **last,
        "learning_rate": float(schedule(end)),
        "tasks_per_sec": steps * config.meta_batch_size / seconds,
        "sec_per_step": seconds / steps,
    }
    if clock.feed is not None:
        # Host sampling runs beside the device; only the wait shows in the step time.
        build, wait = clock.feed.times(steps)
        scalars.update(data_sec_per_step=build, data_wait_sec_per_step=wait)
    scalars.update(extra)
    writer.write_scalars(end, scalars)
    total = time.perf_counter() - clock.started
    eta = total / max(end - clock.start, 1) * (config.num_steps - end)
    logging.info(
        "step %d/%d  meta_loss %.4f  (before adaptation %.4f)  %.0f tasks/s  ETA %s",
        end,
        config.num_steps,
        last["meta_loss"],
        last["loss_before"],
        scalars["tasks_per_sec"],
        time.strftime("%H:%M:%S", time.gmtime(eta)),
    )
