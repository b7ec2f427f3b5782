"""Command-line plumbing shared by the entry points: flag parsing and one-line errors."""

from __future__ import annotations

import logging as std_logging
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
        try:
            return flags.FLAGS(argv)
        except (AttributeError, KeyError) as e:
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
            fail(prog, str(e))

    return parse


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
    are not installed (the TPU/libtpu line every CPU run starts with). `--verbosity=1`
    keeps them.
    """

    def filter(self, record) -> bool:
        if record.levelno >= std_logging.WARNING:
            return True
        path = record.pathname.replace("\\", "/")
        return "/orbax/" not in path and not path.endswith("jax/_src/xla_bridge.py")


def start_runtime(prog: str):
    """Applies the runtime flags; must run before anything touches a JAX backend.

    Returns:
        A `distributed.PeerWatch` when several processes run, else None.
    """
    import jax  # the entry points import this module before jax-heavy ones

    from maml_dist import compile_cache, distributed
    from maml_dist.errors import UserInputError

    f = flags.FLAGS
    if f.verbosity < 1:
        logging.get_absl_handler().addFilter(_QuietLibraries())
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
