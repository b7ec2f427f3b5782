"""Eight fake CPU devices for every test; set before any JAX backend starts."""

import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

jax.config.update("jax_num_cpu_devices", 8)

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

from maml_dist import compile_cache  # noqa: E402

# One persistent compilation cache for the whole test run, which its pytest-xdist workers
# and the command-line runs they start share through JAX_COMPILATION_CACHE_DIR (their
# default): many tests compile the same programs (the tiny configs' meta-steps,
# evaluations and meta-tests), and loading one is much faster than compiling it (the
# suite took 1,167 s without, on 2 cores). The first process of the run (pytest itself,
# or xdist's controller, which starts the workers after reading this file) makes the
# folder and removes it at exit; the workers inherit it through the environment. A
# folder of the run's own, not the user's, keeps the tests independent of earlier runs.
# Two workers may write the same entry at once: JAX reads a damaged entry as a miss
# (a warning, then a compile), and either writer's entry is a compile of the same program.
_SHARED = "MAML_DIST_TEST_XLA_CACHE"
# Only an xdist worker takes the folder from its environment: a value left exported in a
# shell must not make a later run reuse (and never remove) an old folder.
_CACHE = os.environ.get(_SHARED) if os.environ.get("PYTEST_XDIST_WORKER") else None
if _CACHE is None:
    _CACHE = tempfile.mkdtemp(prefix="maml_dist_test_xla_cache_")
    os.environ[_SHARED] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
compile_cache.enable(_CACHE)
