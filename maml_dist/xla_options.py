"""The XLA compiler options of the trainer's programs, per backend (each one measured).

XLA compiles CPU programs with LLVM at -O3. At -O2 the sinusoid paper run's scanned
meta-step compiled in 1.32 s instead of 1.75 s and ran 189 instead of 204 us per step;
the Omniglot 5-way 1-shot conv step compiled in 3.8 s instead of 5.0 s at the same speed
(71.3 and 70.2/72.3 tasks/s). README, "The trainer against a hand-written loop", has the
commands. Accelerators keep XLA's defaults: nothing there was measured.

Programs that only draw random numbers and move data (task sampling, the state's
initialisation) are also compiled without XLA:CPU's fusion emitters
(`draw_options`): the sinusoid paper run's chunk sampler compiled in 0.39-0.41 s instead
of 0.63-0.64 s, its validation tasks in 0.43-0.45 s instead of 0.63-0.64 s and its state
in 0.32-0.33 s instead of 0.41-0.44 s, to the same bits (tests/test_xla_options.py
checks them), and the chunk sampler ran in 5.4 ms instead of 5.6 ms per 500 meta-steps.
The meta-step itself ran 30% slower that way (228 against 176 us), so it keeps them.
"""

from __future__ import annotations

import jax

_CPU = {"xla_backend_optimization_level": 2}
# On top of _CPU for `draw_options`.
_CPU_DRAW = {"xla_cpu_use_fusion_emitters": False}


def compiler_options(platform: str | None = None) -> dict | None:
    """The options for `jax.jit(..., compiler_options=...)` on `platform`.

    Args:
        platform: "cpu", "gpu", "tpu", ...; None for JAX's default backend.

    Returns:
        A fresh dict of options, or None for XLA's defaults.
    """
    platform = platform or jax.default_backend()
    return dict(_CPU) if platform == "cpu" else None


def draw_options(platform: str | None = None) -> dict | None:
    """`compiler_options` for programs that draw tasks or initial parameters on `platform`.

    The same bits as under `compiler_options`, compiled faster on CPU (module docstring).
    """
    platform = platform or jax.default_backend()
    return {**_CPU, **_CPU_DRAW} if platform == "cpu" else None
