"""The meta-update (`make_train_step`) and the jitted programs that run chunks of it."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from maml_dist import nonfinite, xla_options
from maml_dist import state as state_lib
from maml_dist.state import TrainState
from maml_dist.types import RATES, TaskBatch


def make_train_step(
    meta_grad_fn: Callable, tx: optax.GradientTransformation, max_nonfinite_in_row: int = 1
) -> Callable:
    """Returns the pure `(state[, tasks][, measure][, data]) -> (state, metrics)` meta-update.

    `tasks` (the meta-batch, sharded over the task axis) is passed when the host samples
    them; device-sampled families take none. `measure` and `data` are as in
    `meta_objective.task_terms`.

    `measure` also decides whether `grad_norm` is computed (else NaN), and, where the
    algorithm learns inner rates, their range (`inner_lr_min`, `inner_lr_max`).

    A step whose meta-loss, meta-gradient or update is not finite changes neither the
    meta-parameters nor the optimiser state (`nonfinite.guard`); after
    `max_nonfinite_in_row` of them in a row the state stops changing. The metrics
    `skipped_steps` and `nonfinite_in_row` count them.
    """

    def train_step(state: TrainState, tasks: TaskBatch | None = None, measure=True, data=None):
        grads, metrics = meta_grad_fn(state.meta_params, state.step, tasks, measure, data)
        # Keeps XLA from fusing the update into the gradient computation: fusion (and so
        # FMA contraction) there depends on the device count, and would break the
        # bit-identity that task_batching="loop" + reduction="ordered" promise.
        grads = jax.lax.optimization_barrier(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.meta_params)
        meta_params = optax.apply_updates(state.meta_params, updates)
        new = state.replace(step=state.step + 1, meta_params=meta_params, opt_state=opt_state)
        # The optimiser state too: Adam's second moment can overflow on finite gradients.
        finite = nonfinite.all_finite((metrics["meta_loss"], grads, meta_params, opt_state))
        state = nonfinite.guard(state, new, finite, max_nonfinite_in_row)
        # Running batch-norm statistics travel as "gradients" (state.running_average).
        grad_norm = _when(measure, lambda: optax.tree.norm(state_lib.learned(grads)))
        metrics = {
            **metrics,
            "grad_norm": grad_norm,
            "skipped_steps": state.skipped_steps,
            "nonfinite_in_row": state.nonfinite_in_row,
            **_rate_range(state.meta_params, measure),
        }
        return state, metrics

    return train_step


def _rate_range(meta_params, measure) -> dict[str, jax.Array]:
    """The least and greatest learned inner rate (Meta-SGD's; MAML++'s), if any.

    Rates that wander far from the inner learning rate, or below zero, are what the
    docs/algorithms.md's "MAML++ with five inner steps" saw before a run diverged; these let a user
    watch them in TensorBoard (`train/inner_lr_min`, `train/inner_lr_max`).
    """
    if not isinstance(meta_params, dict) or RATES not in meta_params:
        return {}
    leaves = jax.tree.leaves(meta_params[RATES])
    flat = jnp.concatenate([jnp.ravel(r).astype(jnp.float32) for r in leaves])
    return {
        "inner_lr_min": _when(measure, lambda: jnp.min(flat)),
        "inner_lr_max": _when(measure, lambda: jnp.max(flat)),
    }


def _when(measure: bool | jax.Array, fn: Callable[[], jax.Array]) -> jax.Array:
    """`fn()` (a float scalar) if `measure`, else NaN: a real branch when `measure` is traced.

    The trainer reports only a chunk's last step, so the others skip what only a report
    reads (measured: the gradient norm's reduction cost ~1.5% of the sinusoid step).
    """
    if isinstance(measure, bool) and measure:
        return fn()
    out = jax.eval_shape(fn)
    nan = lambda: jnp.full(out.shape, jnp.nan, out.dtype)  # noqa: E731
    return nan() if isinstance(measure, bool) else jax.lax.cond(measure, fn, nan)


def make_multi_step_over(train_step: Callable) -> Callable:
    """Returns jitted `(state, batches) -> (state, metrics)` over host-sampled batches.

    `batches` stacks one meta-batch per step on a leading axis (sharded
    `P(None, "tasks")`); the steps run as one `lax.scan`, like `make_multi_step`, and
    likewise only the last step's pre-adaptation metrics are measured.
    """

    @functools.partial(jax.jit, donate_argnums=0, compiler_options=xla_options.compiler_options())
    def run(state, batches):
        n = jax.tree.leaves(batches)[0].shape[0]
        return jax.lax.scan(lambda s, xs: train_step(s, *xs), state, (batches, _last_only(n)))

    return run


def make_multi_step(train_step: Callable, sampler: Callable | None = None) -> Callable:
    """Returns jitted `(state, n[, data]) -> (state, metrics stacked over n steps)`.

    `data` is what device-sampled tasks are drawn from (`meta_objective.task_terms`), an
    argument rather than a constant the step closes over: XLA would embed a closed-over
    table in the program (and constant-fold over it at compile time).

    Running n steps in one executable (a `lax.scan`) removes n - 1 dispatches and keeps
    only one executable in flight per chunk (README trap 2), compiled with
    `xla_options.compiler_options()`. The state is donated. The metrics of every step but
    the last hold NaN before-adaptation values and gradient norms (`_last_only`).

    With `sampler` (`parallel.make_chunk_sampler`), the chunk's tasks are sampled first,
    all at once, and the steps scan over them; without, each step samples its own.
    """

    @functools.partial(
        jax.jit,
        static_argnums=1,
        donate_argnums=0,
        compiler_options=xla_options.compiler_options(),
    )
    def run(state, n: int, data=None):
        if sampler is None:
            return jax.lax.scan(lambda s, m: train_step(s, None, m, data), state, _last_only(n))
        batches = sampler(state.step + jnp.arange(n), data)
        return jax.lax.scan(lambda s, xs: train_step(s, *xs, data), state, (batches, _last_only(n)))

    return run


def make_chunk_sample(sampler: Callable) -> Callable:
    """Returns jitted `(start, n[, data]) -> tasks` of the meta-steps start..start+n-1.

    `sampler` is `parallel.make_chunk_sampler`'s; the result feeds `make_multi_step_over`. The
    two programs together run what `make_multi_step(train_step, sampler)` runs in one,
    but compile separately, side by side (`device_run.DeviceRun`).
    """

    @functools.partial(jax.jit, static_argnums=1, compiler_options=xla_options.compiler_options())
    def sample_chunk(start, n: int, data=None):
        return sampler(start + jnp.arange(n), data)

    return sample_chunk


def _last_only(n: int) -> jax.Array:
    """Per-step `measure` flags of a chunk of n steps: only the last one, the one reported.

    Scoring the query set before adaptation is a forward pass per task that no gradient
    needs (measured: ~25% of an Omniglot 5-way 1-shot step with 15 queries per class).
    """
    return jnp.arange(n) == n - 1
