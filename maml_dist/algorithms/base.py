"""The algorithm interface every member of the MAML family implements, and shared pieces.

An algorithm is a `NamedTuple` of pure functions over pytrees, as an optax optimiser is a
pair `(init, update)`: whatever shards, reduces, checkpoints or logs it does not need to
know which algorithm it holds.

- `init(params) -> meta_params`: a dict `{"params": params, ...}` with whatever else the
  algorithm meta-learns (Meta-SGD's per-element learning rates; MAML++'s per-step rates).
- `task_grad(meta_params, task, step) -> (grads, (loss, metrics))`: one task's outer
  "gradient" (a pytree shaped like `meta_params`, fed to the optax meta-optimiser) and the
  task's query loss and metrics after adaptation. `step` is the meta-step, for schedules
  that anneal with training (MAML++'s multi-step loss weights, derivative-order annealing).
- `inner_step(meta_params, params, x, y, j) -> params`: inner step `j` at meta-test time
  (per-step learned rates or batch-norm state index on `j`).
- `adapt(meta_params, x, y, num_steps) -> params`: `num_steps` inner steps from the
  meta-learned initialisation: what the trainer's validation, the evaluator and a notebook
  use at meta-test time.
- `meta_loss(meta_params, task, step) -> (loss, metrics)` (optional): the task's query loss
  after adaptation as a differentiable function of `meta_params`, where the algorithm's
  outer gradient is its gradient (MAML, first-order MAML). The meta-step then takes one
  gradient of the meta-batch's weighted loss instead of summing per-task gradients, which
  lets XLA fold the sum over tasks into the backward pass's matrix products.
- `per_step`: whether the network's outputs depend on how many inner steps its parameters
  have had (MAML++'s per-step batch norm); evaluation then calls each metric as
  `metric(params, x, y, step, context)`, `context` the task's support images (which
  "per_step_support" batch norm normalises with).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from maml_dist.models import PER_STEP_BN_MODES
from maml_dist.norms import STEP_STATS
from maml_dist.types import HEAD, HeadSplit, LossFn, MetaParams, Params, QueryFn, TaskBatch

TaskGrad = tuple[MetaParams, tuple[jax.Array, dict[str, jax.Array]]]


class Algorithm(NamedTuple):
    """A meta-learning algorithm as pure functions (see the module docstring).

    Attributes:
        name: the registry name.
        init: `params -> meta_params`.
        task_grad: `(meta_params, task, step) -> (grads, (query_loss, query_metrics))`.
        inner_step: `(meta_params, params, x, y, j) -> params`, one meta-test inner step.
        adapt: `(meta_params, x, y, num_steps) -> params`.
        per_step: metrics take the parameters' inner-step count as a 4th argument.
        meta_loss: `(meta_params, task, step) -> (query_loss, query_metrics)` whose
            gradient is `task_grad`'s, or None where the outer gradient is not one
            (iMAML, Reptile).
    """

    name: str
    init: Callable[[Params], MetaParams]
    task_grad: Callable[[MetaParams, TaskBatch, Any], TaskGrad]
    inner_step: Callable[[MetaParams, Params, jax.Array, jax.Array, Any], Params]
    adapt: Callable[[MetaParams, jax.Array, jax.Array, int], Params]
    per_step: bool = False
    meta_loss: Callable[[MetaParams, TaskBatch, Any], tuple[jax.Array, dict]] | None = None


class StepNet(NamedTuple):
    """A network evaluated at an inner step, as MAML++ uses it.

    Attributes:
        support_fn: `(params, x, y, step) -> (loss, stats)`: a support set's loss, what
            inner steps descend; with per-step batch norm the set is normalised with its
            own batch statistics, and with running statistics ("per_step_running")
            `stats` holds them (the STEP_STATS collection); otherwise `stats` is empty.
        query_fn: `(params, x, y, step, context) -> (loss, metrics)`: a query set scored
            as at meta-test, `context` the task's support images; each query image is
            normalised with the running statistics of `step` ("per_step_running") or
            with the support set's statistics at `params` ("per_step_support"),
            independently of the other queries.
        per_step: whether the network has per-step batch norm (its outputs depend on
            `step`; otherwise `step` and `context` are ignored).
        running: whether that batch norm keeps running statistics, which the support
            passes' `stats` update.
    """

    support_fn: Callable
    query_fn: Callable
    per_step: bool
    running: bool = False


@dataclasses.dataclass(frozen=True)
class InnerConfig:
    """Static (hashable, never traced) settings of an algorithm.

    Attributes:
        lr: inner SGD step size (alpha); Meta-SGD's initial per-element rate.
        steps: inner steps in meta-training.
        first_order: drop second-order terms (FOMAML; first-order Meta-SGD, ANIL, BOIL).
        remat: recompute each inner step in the backward pass (`jax.checkpoint`), so
            memory no longer grows with the activations of every step.
        imaml_lambda: iMAML's proximal strength lambda in lambda/2 |phi - theta|^2.
        cg_steps: iMAML's conjugate-gradient iterations.
        line_search: iMAML's inner steps try rates lr, lr/2, ... (this many) and take the
            first that decreases the proximal objective enough (Armijo); 0: always lr.
        head: the top-level key of the network's head in `params`: the subtree ANIL adapts
            alone and BOIL leaves alone.
        msl: MAML++'s multi-step loss: the meta-objective weighs the query loss after
            every inner step (`mamlpp.msl_weights`).
        msl_anneal_steps: meta-steps over which the MSL weights move from uniform to the
            last step; the last step alone after that (so 0, the default here, turns
            MSL off; the command line's -1 is 10% of `num_steps`).
        lslr: MAML++'s learned per-layer per-step inner learning rates.
        doa_steps: MAML++'s derivative-order annealing: first order for the meta-steps
            before this one, second order from it on (0: second order throughout).
        unroll: meta-training inner loops of at most this many steps are traced as
            straight code, longer ones and rematerialised ones as one `lax.scan`
            (`run_steps`); 0 always scans.
            MAML, first-order MAML, Meta-SGD, ANIL and BOIL; meta-test adaptation always
            scans.
            Measured on CPU (docs/benchmarks.md, "The trainer against a hand-written loop"): the
            sinusoid step 19% faster unrolled at 1 and 5 steps, the Omniglot conv step
            the same at 1 step and 21% slower at 5, hence 1 by default.
    """

    lr: float = 0.01
    steps: int = 1
    first_order: bool = False
    remat: bool = False
    imaml_lambda: float = 2.0
    cg_steps: int = 5
    line_search: int = 8
    head: str = HEAD
    msl: bool = True
    msl_anneal_steps: int = 0
    lslr: bool = True
    doa_steps: int = 0
    unroll: int = 1


def loss_query_fn(loss_fn: LossFn) -> QueryFn:
    """The query function of a problem whose only metric is its loss."""
    return lambda params, x, y: (loss_fn(params, x, y), {})


def sgd_step(loss_fn: LossFn, params: Params, x, y, lr, first_order: bool = False) -> Params:
    """One inner step `params - lr * grad L(params)` with one scalar rate `lr`."""
    grads = jax.grad(loss_fn)(params, x, y)
    if first_order:
        grads = jax.lax.stop_gradient(grads)
    return jax.tree.map(lambda p, g: p - lr * g, params, grads)


def elementwise_sgd_step(
    loss_fn: LossFn, params: Params, x, y, rates: Params, first_order: bool = False
) -> Params:
    """One inner step `params - rates * grad L(params)`, `rates` a tree like `params`."""
    grads = jax.grad(loss_fn)(params, x, y)
    if first_order:
        grads = jax.lax.stop_gradient(grads)
    return jax.tree.map(lambda p, a, g: p - a * g, params, rates, grads)


def run_steps(
    step_fn: Callable, params: Params, num_steps: int, remat: bool = False, unroll: int = 0
) -> Params:
    """`num_steps` applications of `step_fn(params, j)`.

    Args:
        step_fn: one inner step, `(params, j) -> params`.
        params: where the steps start.
        num_steps: how many steps.
        remat: rematerialise each step in the backward pass (`jax.checkpoint`).
        unroll: up to this many steps are traced as straight code (`j` a Python int); more
            run as one `lax.scan` over j, whose program size does not grow with the steps.
            A loop costs the differentiated meta-step on CPU: its residuals are stacked and
            sliced, and XLA cannot fuse across the loop's boundary (measured,
            `InnerConfig.unroll`). Ignored with `remat`: unrolled, the rematerialised
            steps saved no memory and ran 1.6x slower (sinusoid, 5 steps,
            scripts/bench_inner_steps.py), so those always scan.
    """
    if num_steps <= unroll and not remat:
        for j in range(num_steps):
            params = step_fn(params, j)
        return params

    def body(p, j):
        return step_fn(p, j), None

    if remat:
        body = jax.checkpoint(body)
    out, _ = jax.lax.scan(body, params, jnp.arange(num_steps))
    return out


def make_adapt(inner_step: Callable) -> Callable:
    """The `adapt` of an algorithm whose meta-test inner steps are `inner_step`."""

    def adapt(meta_params: MetaParams, x, y, num_steps: int) -> Params:
        return run_steps(
            lambda p, j: inner_step(meta_params, p, x, y, j), meta_params["params"], num_steps
        )

    return adapt


def adaptation_curve(
    algorithm: Algorithm,
    meta_params: MetaParams,
    task: TaskBatch,
    steps: int,
    metrics: tuple[LossFn, ...],
) -> jax.Array:
    """Query metrics of one task after 0, 1, ..., `steps` meta-test inner steps.

    Returns:
        Array of shape (steps + 1, len(metrics)).
    """

    def scores(p, j):
        step = (j, task.support_x) if algorithm.per_step else ()
        return jnp.stack([m(p, task.query_x, task.query_y, *step) for m in metrics])

    def body(p, j):
        query = scores(p, j)
        p = algorithm.inner_step(meta_params, p, task.support_x, task.support_y, j)
        return p, query

    final, history = jax.lax.scan(body, meta_params["params"], jnp.arange(steps))
    return jnp.concatenate([history, scores(final, steps)[None]])


def _takes(model, argument: str) -> bool:
    return argument in inspect.signature(model.__call__).parameters


def make_apply(model) -> Callable:
    """`(params, x, step=0, context=None) -> outputs` of a flax module at meta-test.

    `step` (the parameters' inner-step count) and `context` (the task's support images)
    reach modules whose `__call__` takes them (per-step batch norm, see models.ConvNet);
    others ignore them.
    """
    takes_step = _takes(model, "step")
    takes_context = _takes(model, "context")

    def apply(params, x, step=0, context=None):
        kwargs = {"step": step} if takes_step else {}
        if takes_context and context is not None:
            kwargs["context"] = context
        return model.apply({"params": params}, x, **kwargs)

    return apply


def make_loss_fn(model, task_loss: Callable[[jax.Array, jax.Array], jax.Array]) -> LossFn:
    """Builds `loss_fn(params, x, y, step=0, context=None)` from a module and a task's loss."""
    apply = make_apply(model)

    def loss_fn(params, x, y, step=0, context=None):
        return task_loss(apply(params, x, step, context), y)

    return loss_fn


def make_query_fn(
    model,
    task_loss: Callable[[jax.Array, jax.Array], jax.Array],
    scores: dict[str, Callable[[jax.Array, jax.Array], jax.Array]],
) -> QueryFn:
    """Builds `(params, x, y, step=0, context=None) -> (loss, {name: score})` (one pass)."""
    apply = make_apply(model)

    def query_fn(params, x, y, step=0, context=None):
        predictions = apply(params, x, step, context)
        return task_loss(predictions, y), {n: f(predictions, y) for n, f in scores.items()}

    return query_fn


def make_step_net(
    model,
    task_loss: Callable[[jax.Array, jax.Array], jax.Array],
    scores: dict[str, Callable[[jax.Array, jax.Array], jax.Array]],
) -> StepNet:
    """The support and query functions of a flax module, for MAML++ (see StepNet).

    A module with per-step batch norm (`bn_mode` in PER_STEP_BN_MODES) normalises support
    sets with their batch statistics, and returns them where it keeps running ones
    ("per_step_running"); other modules ignore the step.
    """
    bn_mode = getattr(model, "bn_mode", None)
    per_step = bn_mode in PER_STEP_BN_MODES
    running = bn_mode == "per_step_running"
    apply = make_apply(model)

    def support_fn(params, x, y, step):
        if not running:
            # "per_step_support" without a context normalises the set with its own.
            return task_loss(apply(params, x, step), y), {}
        predictions, sown = model.apply(
            {"params": params}, x, step=step, train=True, mutable=[STEP_STATS]
        )
        # sow appends to a tuple; each layer is called once per forward pass.
        stats = jax.tree.map(lambda t: t[0], sown[STEP_STATS], is_leaf=_is_tuple)
        return task_loss(predictions, y), stats

    def query_fn(params, x, y, step, context=None):
        predictions = apply(params, x, step, context)
        return task_loss(predictions, y), {n: f(predictions, y) for n, f in scores.items()}

    return StepNet(support_fn, query_fn, per_step, running)


def _is_tuple(x) -> bool:
    return isinstance(x, tuple)


def make_head_split(
    model,
    task_loss: Callable[[jax.Array, jax.Array], jax.Array],
    scores: dict[str, Callable[[jax.Array, jax.Array], jax.Array]],
    head: str = HEAD,
) -> HeadSplit | None:
    """The body/head split of a flax module whose `__call__` takes `part` (see models.py).

    Returns None for a module without that argument: ANIL then runs the whole network in
    every inner step, which gives the same result at more cost.
    """
    if not _takes(model, "part"):
        return None

    def features(params, x):
        return model.apply({"params": params}, x, part="body")

    def head_outputs(head_params, feats):
        return model.apply({"params": {head: head_params}}, feats, part="head")

    def loss_fn(head_params, feats, y):
        return task_loss(head_outputs(head_params, feats), y)

    def query_fn(head_params, feats, y):
        predictions = head_outputs(head_params, feats)
        return task_loss(predictions, y), {n: f(predictions, y) for n, f in scores.items()}

    return HeadSplit(features, loss_fn, query_fn)
