"""The XLA compiler options of the trainer's programs, per backend (each one measured).

XLA compiles CPU programs with LLVM at -O3. At -O2 the sinusoid paper run's scanned
meta-step compiled in 1.32 s instead of 1.75 s and ran 189 instead of 204 us per step;
the Omniglot 5-way 1-shot conv step compiled in 3.8 s instead of 5.0 s at the same speed
(71.3 and 70.2/72.3 tasks/s). docs/benchmarks.md, "The trainer against a hand-written loop", has the
commands. Accelerators keep XLA's defaults: nothing there was measured.
"""

from __future__ import annotations

import jax

_CPU = {"xla_backend_optimization_level": 2}


def compiler_options(platform: str | None = None) -> dict | None:
    """The options for `jax.jit(..., compiler_options=...)` on `platform`.

    Args:
        platform: "cpu", "gpu", "tpu", ...; None for JAX's default backend.

    Returns:
        A fresh dict of options, or None for XLA's defaults.
    """
    platform = platform or jax.default_backend()
    return dict(_CPU) if platform == "cpu" else None
