"""MAML++ (Antoniou et al. 2019, "How to train your MAML"), each change its own switch.

MAML's inner loop and second-order meta-gradient, plus what the paper found makes it
train stably (the switches are `InnerConfig` fields, so each can be ablated):

- multi-step loss (`msl`): the meta-objective is a weighted sum of the query losses after
  every inner step, the weights annealed from uniform towards the last step
  (`msl_weights`, the schedule of the paper's code) over `msl_anneal_steps` meta-steps;
- learned per-layer per-step inner rates (`lslr`): one rate per parameter tensor and
  inner step, `meta_params["inner_lr"]`, initialised at `lr` and meta-learned;
- derivative-order annealing (`doa_steps`): first order before that meta-step, second
  order from it on; a `lax.cond` on the step, so the first-order steps cost what
  first-order MAML costs;
- per-step batch norm: the network's (`models.ConvNet(bn_mode="per_step_running")` or
  `"per_step_support"`), evaluated here at the inner step of the parameters it is given
  (`StepNet`): support sets normalised with their own batch statistics; queries with the
  running statistics of their step ("per_step_running"; the support statistics of each
  step travel back as the "gradient" of the running statistics, which the meta-optimiser
  averages, `maml_dist.state.running_average`) or with the support set's statistics at
  the same parameters ("per_step_support", MetaBN), in meta-training as at meta-test;
- the cosine-annealed meta learning rate is the meta-optimiser's
  (`maml_dist.state.make_meta_optimizer`).

Slots of per-step batch norm are indexed by how many inner updates the parameters being
evaluated have had: the support pass of inner step j and the query after j updates use
slot j. Meta-training fills slots 0..steps-1 from the support passes of the inner steps
and slot `steps` from one more forward pass of the support set at the adapted
parameters. The paper's code indexes the query after step j with slot j - 1 and
normalises every set, queries included, with its batch statistics (`F.batch_norm(...,
training=True)`), in training and at meta-test: transductive. Here a query's prediction
does not depend on the other queries. Two other placements of the running statistics were
measured and dropped (docs/algorithms.md, "MAML++ ablation"): for every set at meta-test only (15.9%
after 5 steps against MAML's 69.2%: the inner loop meta-learned on batch statistics does
not adapt on running ones) and for every set in training too (18.7%).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maml_dist.algorithms.base import (
    Algorithm,
    InnerConfig,
    StepNet,
    loss_query_fn,
    make_adapt,
)
from maml_dist.errors import UserInputError
from maml_dist.norms import RUNNING_STATS
from maml_dist.types import RATES, LossFn, QueryFn, TaskBatch

# The paper code's floor on the weight of each query loss but the last, times the steps.
_MSL_FLOOR = 0.03


def msl_weights(step, num_inner: int, anneal_steps: int) -> jax.Array:
    """Weights of the query losses after inner steps 1..num_inner at meta-step `step`.

    The paper's schedule (`get_per_step_loss_importance_vector` of its code, with meta-steps
    for epochs): uniform at step 0; every weight but the last falls linearly by
    1 / (num_inner * anneal_steps) per meta-step to a floor of 0.03 / num_inner, the last
    rises by what the others lose; from `anneal_steps` on, the last step alone. The
    weights sum to 1 throughout (both clamps take effect at the same step).

    Returns:
        (num_inner,) float32.
    """
    n = num_inner
    last_only = jnp.zeros((n,), jnp.float32).at[-1].set(1.0)
    if anneal_steps <= 0 or n == 1:
        return last_only
    decay = jnp.asarray(step, jnp.float32) / (anneal_steps * n)
    floor = _MSL_FLOOR / n
    early = jnp.maximum(1.0 / n - decay, floor)
    last = jnp.minimum(1.0 / n + (n - 1) * decay, 1.0 - (n - 1) * floor)
    annealing = jnp.concatenate([jnp.full((n - 1,), early), last[None]])
    return jnp.where(step < anneal_steps, annealing, last_only)


def _stats_as_grads(grads, stats):
    """`grads` with each per-step norm layer's running statistics replaced by `stats`."""
    out = dict(grads)
    for layer, s in stats.items():
        out[layer] = {**grads[layer], RUNNING_STATS[0]: s["mean"], RUNNING_STATS[1]: s["var"]}
    return out


def make(
    loss_fn: LossFn,
    inner: InnerConfig,
    query_fn: QueryFn | None = None,
    step_net: StepNet | None = None,
) -> Algorithm:
    """MAML++ with the switches of `inner` (`msl`, `lslr`, `doa_steps`, `first_order`).

    Args:
        loss_fn: `loss_fn(params, x, y)`, the support loss; used only without
            `step_net` (the inner steps, in training and at meta-test, descend
            `step_net.support_fn`).
        inner: inner-loop settings.
        query_fn: `(params, x, y) -> (loss, metrics)`; used only without `step_net`.
        step_net: the network in meta-training mode (`make_step_net`); default
            `loss_fn` and `query_fn` with no per-step state.

    Raises:
        UserInputError: if `inner.steps` is 0 (MAML++ is defined by its inner steps).
    """
    if inner.steps < 1:
        raise UserInputError(
            "algorithm 'mamlpp' needs at least one inner step; pass --config.inner_steps=5"
        )
    if step_net is None:
        query_fn = query_fn or loss_query_fn(loss_fn)
        step_net = StepNet(
            lambda p, x, y, j: (loss_fn(p, x, y), {}),
            lambda p, x, y, j, context=None: query_fn(p, x, y),
            per_step=False,
        )
    n = inner.steps
    # With no annealing the weights are the last step's alone from the start: the
    # intermediate query passes would be computed for a weight of zero.
    msl = inner.msl and inner.msl_anneal_steps > 0 and n > 1

    def init(params):
        meta = {"params": params}
        if inner.lslr:
            meta[RATES] = jax.tree.map(lambda p: jnp.full((n,), inner.lr, p.dtype), params)
        return meta

    def update(meta_params, params, grads, j):
        if not inner.lslr:
            return jax.tree.map(lambda p, g: p - inner.lr * g, params, grads)
        # Meta-test may run more steps than training did; those reuse the last rate.
        slot = jnp.minimum(j, n - 1)
        return jax.tree.map(lambda p, r, g: p - r[slot] * g, params, meta_params[RATES], grads)

    def query(params, task: TaskBatch, j):
        return step_net.query_fn(params, task.query_x, task.query_y, j, task.support_x)

    def objective(meta_params, task: TaskBatch, first_order: bool, step, multi_step: bool):
        def body(params, j):
            (_, stats), grads = jax.value_and_grad(step_net.support_fn, has_aux=True)(
                params, task.support_x, task.support_y, j
            )
            if first_order:
                grads = jax.lax.stop_gradient(grads)
            params = update(meta_params, params, grads, j)
            return params, (stats, query(params, task, j + 1) if multi_step else ())

        adapted, (support_stats, queries) = jax.lax.scan(
            jax.checkpoint(body) if inner.remat else body, meta_params["params"], jnp.arange(n)
        )
        if multi_step:
            # The scan's last query pass is the final one; no extra forward pass.
            losses, all_metrics = queries
            loss, metrics = losses[-1], jax.tree.map(lambda a: a[-1], all_metrics)
            total = jnp.sum(msl_weights(step, n, inner.msl_anneal_steps) * losses)
        else:
            loss, metrics = query(adapted, task, n)
            total = loss
        stats = support_stats
        if step_net.running:
            # Slot n: the support set at the adapted parameters (a forward pass, no gradient).
            _, last = step_net.support_fn(adapted, task.support_x, task.support_y, n)
            stats = jax.tree.map(lambda s, q: jnp.concatenate([s, q[None]]), stats, last)
        return total, (loss, metrics, jax.lax.stop_gradient(stats))

    def meta_objective(meta_params, task: TaskBatch, first_order: bool, step):
        if not msl:
            return objective(meta_params, task, first_order, step, False)
        # Once annealed, the weights are the last step's alone: a real branch (the
        # predicate is unbatched under vmap and lax.map) skips the other query passes,
        # which cost as much again as the rest of the step.
        return jax.lax.cond(
            step < inner.msl_anneal_steps,
            lambda m, t, s: objective(m, t, first_order, s, True),
            lambda m, t, s: objective(m, t, first_order, s, False),
            meta_params,
            task,
            step,
        )

    def grads_of(first_order: bool):
        def task_grad(meta_params, task, step):
            (_, (loss, metrics, stats)), grads = jax.value_and_grad(meta_objective, has_aux=True)(
                meta_params, task, first_order, step
            )
            if step_net.running:
                grads = {**grads, "params": _stats_as_grads(grads["params"], stats)}
            return grads, (loss, metrics)

        return task_grad

    if inner.first_order or inner.doa_steps <= 0:
        task_grad = grads_of(inner.first_order)
    else:

        def task_grad(meta_params, task, step):
            # An unbatched predicate: a real branch under vmap and lax.map, so first-order
            # steps skip the Hessian-vector products.
            return jax.lax.cond(
                step < inner.doa_steps,
                grads_of(True),
                grads_of(False),
                meta_params,
                task,
                step,
            )

    def inner_step(meta_params, params, x, y, j):
        grads = jax.grad(lambda p: step_net.support_fn(p, x, y, j)[0])(params)
        return update(meta_params, params, grads, j)

    return Algorithm(
        "mamlpp", init, task_grad, inner_step, make_adapt(inner_step), step_net.per_step
    )
