"""Command-line plumbing shared by the entry points: flag parsing and one-line errors."""

from __future__ import annotations

import gc
import logging as std_logging
import os
import re
import sys
from typing import NoReturn

from absl import flags, logging


def fail(prog: str, message: str, status: int = 2) -> NoReturn:
    """Prints `prog: error: message` on stderr and exits with `status` (2: bad input)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(status)


def make_flags_parser(prog: str):
    """Returns an `app.run` flags parser that turns bad flags into one-line errors.

    A misspelt `--config.<field>` makes ml_collections raise deep inside absl with a long
    traceback; users get the field name and the suggestion instead.
    """

    def parse(argv: list[str]) -> list[str]:
        config_file = _config_file(argv)
        if config_file is not None:
            _check_config_file(prog, config_file)
        try:
            rest = flags.FLAGS(argv)
            if config_file is not None:
                # ml_collections defers a failed load to the first use; make it fail here.
                flags.FLAGS["config"].value.get("")
            return rest
        except SyntaxError as e:
            fail(
                prog,
                f"config file {config_file!r} is not valid Python ({e.msg}, line {e.lineno}); "
                f"fix it",
            )
        except (AttributeError, KeyError) as e:
            if "get_config" in str(e):
                fail(
                    prog,
                    f"config file {config_file!r} defines no get_config(); a config file "
                    f"defines `def get_config(): ...` returning an ml_collections.ConfigDict",
                )
            text = str(e).replace("\\n", "\n").replace("\\'", "'")
            name = re.search(r"'([^'\n]+)'", text)
            hint = re.search(r'Did you mean "([^"]+)"', text)
            fail(
                prog,
                f"unknown config field {name.group(1) if name else text!r}"
                + (f" (did you mean {hint.group(1)!r}?)" if hint else "")
                + "; see the config file for the fields it defines",
            )
        except flags.Error as e:
            text = str(e)
            if config_file is not None and "Error whilst parsing config file" in text:
                # ml_collections puts the get_config() traceback in the message; its last
                # line is the error the user's code raised.
                raised = text.strip().splitlines()[-1].strip()
                fail(
                    prog,
                    f"config file {config_file!r} raised {raised}; fix the file or the "
                    f"argument after its colon",
                )
            fail(prog, text)
        except Exception as e:
            if config_file is None:
                raise
            # The user's config code failed: name it, with the error it raised.
            fail(
                prog,
                f"config file {config_file!r} raised {type(e).__name__}: {e}; fix the file "
                f"or the argument after its colon",
            )

    return parse


def _config_file(argv: list[str]) -> str | None:
    """The file of `--config=FILE[:ARG]` in `argv`, or None without a --config flag."""
    if "config" not in flags.FLAGS:
        return None
    for i, arg in enumerate(argv[1:], 1):
        if arg.startswith(("--config=", "-config=")):
            return arg.split("=", 1)[1].split(":", 1)[0]
        if arg in ("--config", "-config") and i + 1 < len(argv):
            return argv[i + 1].split(":", 1)[0]
    return None


def _check_config_file(prog: str, path: str) -> None:
    """Fails in one line if the config file cannot be read (before ml_collections tries)."""
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        fail(
            prog,
            f"config file {path!r} {what} (relative paths start at {os.getcwd()!r}); pass a "
            f"file of configs/, e.g. --config=configs/sinusoid.py from the repository root",
        )
    if not os.access(path, os.R_OK):
        fail(prog, f"config file {path!r} is not readable; check its permissions")


def define_runtime_flags() -> None:
    """Flags shared by the entry points: fake CPU devices and multi-process start-up."""
    flags.DEFINE_integer(
        "cpu_devices",
        None,
        "Split the CPU into this many XLA devices (to try sharding without accelerators).",
        lower_bound=1,
    )
    flags.DEFINE_string(
        "coordinator_address", None, "host:port of process 0, for multi-process runs."
    )
    flags.DEFINE_string(
        "compile_cache",
        None,
        "Folder of JAX's persistent compilation cache, so later runs load compiled steps "
        "instead of compiling them; 'off' to disable. Default: $JAX_COMPILATION_CACHE_DIR if "
        "set, else ~/.cache/maml_dist/jax.",
    )
    flags.DEFINE_integer("num_processes", None, "Number of processes.", lower_bound=1)
    flags.DEFINE_integer("process_id", None, "This process's index.", lower_bound=0)
    flags.DEFINE_integer(
        "heartbeat_timeout",
        30,
        "Seconds after which a silent process is declared lost and the others stop.",
        lower_bound=1,
    )


class _QuietLibraries:
    """Drops INFO lines a user cannot act on from the progress log.

    Orbax's chatter (dozens of lines per save) and JAX's report of probing backends that
    are not installed (the TPU/libtpu line every CPU run starts with). Orbax's warnings
    and errors stay, one line each: the traceback of a failed save (a full disk) is
    dropped, since the error reaches the trainer, which stops the run with one line
    naming it. `--verbosity=1` keeps them all, tracebacks included.
    """

    def filter(self, record) -> bool:
        path = record.pathname.replace("\\", "/")
        if record.levelno >= std_logging.WARNING:
            if "/orbax/" in path:
                record.exc_info = record.exc_text = None
            return True
        return "/orbax/" not in path and not path.endswith("jax/_src/xla_bridge.py")


def start_runtime(prog: str, cpu_threads: int = 0):
    """Applies the runtime flags; must run before anything touches a JAX backend.

    Args:
        prog: the entry point's name, for messages.
        cpu_threads: the run's `config.cpu_threads` (0: XLA's default thread pool).

    Returns:
        A `distributed.PeerWatch` when several processes run, else None.
    """
    import jax  # the entry points import this module before jax-heavy ones

    from maml_dist import compile_cache, distributed
    from maml_dist import cpu_threads as cpu_threads_lib
    from maml_dist.errors import UserInputError

    f = flags.FLAGS
    if f.verbosity < 1:
        logging.get_absl_handler().addFilter(_QuietLibraries())
    try:
        if cpu_threads_lib.apply(cpu_threads):
            # XLA makes at least one thread per device.
            logging.info(
                "XLA's CPU thread pool: %d thread(s) (config.cpu_threads=%d)",
                max(cpu_threads, f.cpu_devices or 1),
                cpu_threads,
            )
    except UserInputError as e:
        fail(prog, str(e))
    if f.cpu_devices is not None:
        jax.config.update("jax_num_cpu_devices", f.cpu_devices)
    compile_cache.enable(compile_cache.resolve(f.compile_cache))
    try:
        started = distributed.initialize(
            f.coordinator_address, f.num_processes, f.process_id, f.heartbeat_timeout
        )
    except UserInputError as e:
        fail(prog, str(e))
    except Exception as e:
        # Reported, not swallowed: the process exits non-zero with the runtime's reason.
        fail(prog, f"could not start the multi-process runtime: {e}")
    return distributed.PeerWatch(prog) if started and jax.process_count() > 1 else None


def run_reporting_errors(prog: str, fn, watch=None) -> None:
    """Runs `fn()`, turning user-input errors and lost peer processes into one-line errors.

    Bad input exits with status 2; a run stopped on purpose (`RunStoppedError`, e.g. on
    non-finite values) with status 1.

    Args:
        prog: the entry point's name, for messages.
        fn: the work.
        watch: the `distributed.PeerWatch` of a multi-process run, or None.
    """
    import jax

    from maml_dist.errors import RunStoppedError, UserInputError

    try:
        fn()
    except UserInputError as e:
        fail(prog, str(e))
    except RunStoppedError as e:
        fail(prog, str(e), status=1)
    except jax.errors.JaxRuntimeError as e:
        if watch is None:
            raise
        watch.stop_after_failed_collective(e, wait_s=flags.FLAGS.heartbeat_timeout + 10)
    finally:
        if watch is not None:
            watch.close()


def skip_exit_collection() -> None:
    """Puts every object out of the garbage collector's reach, for a quick exit.

    The interpreter's last collections at exit, over the objects JAX, flax and orbax
    hold, took 0.28 to 0.36 s after a finished run (0.04 s with this; measured on the
    sinusoid trainer). Call it once the work is done and its files are closed: atexit
    handlers still run, and reference counting still frees what is not in a cycle. Only
    the trainer calls it: a suite run once printed an orbax task's never-retrieved
    exception from an evaluation that had skipped a damaged checkpoint, with this on in
    `maml_dist.evaluate` (not reproduced alone), and the evaluator's exit is not timed.
    """
    gc.freeze()
