"""iMAML (Rajeswaran et al. 2019): implicit meta-gradients by conjugate gradient.

Each task's inner problem is regularised towards the initialisation,

    phi*(theta) = argmin_phi  L_S(phi) + lambda/2 |phi - theta|^2,

approximated by `steps` gradient steps from phi = theta. At the optimum,
d phi*/d theta = (I + H/lambda)^-1 with H the Hessian of L_S at phi*, so the meta-gradient
is the solution v of (I + H/lambda) v = grad L_Q(phi), found with `cg_steps` conjugate
gradient iterations on Hessian-vector products (forward-over-reverse). The inner loop is
not differentiated: memory does not grow with `steps`, and `first_order` and `remat` do not
apply.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from maml_dist.algorithms.base import Algorithm, InnerConfig, loss_query_fn, make_adapt
from maml_dist.types import LossFn, QueryFn, TaskBatch


def conjugate_gradient(matvec, b: jax.Array, iterations: int) -> jax.Array:
    """Approximately solves `matvec(x) = b` (symmetric positive definite) from x = 0.

    A fixed number of iterations keeps the cost static (no data-dependent loop under
    `vmap`). The iterate freezes where CG's premise fails: a direction of zero or negative
    curvature (p.Ap <= 0, which a non-convex task's I + H/lambda can have) or a residual
    already exactly zero; the last iterate is returned, as truncated CG does, rather than a
    step of unbounded size or a 0/0. If the very first direction fails, that is `b` itself
    (iMAML's first-order gradient) rather than zero, so no task silently drops out; a
    non-finite `b` is returned as it is, so the failure shows.
    """

    def body(i, carry):
        x, r, p, rs, done, fallback = carry
        ap = matvec(p)
        curvature = jnp.vdot(p, ap)
        fails = ~(curvature > 0) | ~(rs > 0)
        fallback = fallback | ((i == 0) & fails)
        done = done | fails
        alpha = jnp.where(done, 0.0, rs / jnp.where(done, 1.0, curvature))
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = jnp.vdot(r, r)
        beta = jnp.where(done, 0.0, rs_new / jnp.where(done, 1.0, rs))
        p = jnp.where(done, p, r + beta * p)
        return x, r, p, jnp.where(done, rs, rs_new), done, fallback

    rs = jnp.vdot(b, b)
    # zeros_like(rs), not zeros(()): inside shard_map the flags must vary across devices as
    # the rest of the carry does.
    flag = jnp.zeros_like(rs, dtype=bool)
    start = (jnp.zeros_like(b), b, b, rs, flag, flag)
    x, _, _, _, _, fallback = jax.lax.fori_loop(0, iterations, body, start)
    return jnp.where(fallback | ~jnp.isfinite(rs), b, x)


def make(loss_fn: LossFn, inner: InnerConfig, query_fn: QueryFn | None = None) -> Algorithm:
    """Builds iMAML with `inner.steps` proximal gradient steps and `inner.cg_steps` CG iterations.

    Args:
        loss_fn: `loss_fn(params, x, y)`, adapted on the support set.
        inner: `lr`, `steps`, `imaml_lambda`, `cg_steps`.
        query_fn: `(params, x, y) -> (loss, metrics)` on the query set; default the loss.
    """
    query_fn = query_fn or loss_query_fn(loss_fn)
    lam = inner.imaml_lambda

    def inner_step(meta_params, params, x, y, j):
        """A gradient step on L_S(phi) + lambda/2 |phi - theta|^2 (see `line_search`)."""
        del j
        theta = meta_params["params"]

        def proximal(p):
            distance = sum(
                jnp.sum(jnp.square(a - b))
                for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(theta), strict=True)
            )
            return loss_fn(p, x, y) + 0.5 * lam * distance

        value, grads = jax.value_and_grad(proximal)(params)
        if not inner.line_search:
            return jax.tree.map(lambda p, g: p - inner.lr * g, params, grads)
        # Backtracking, all candidates at once (a static cost under vmap): a fixed step
        # diverges wherever lr times the curvature exceeds 2, and iMAML's implicit gradient,
        # unlike MAML's, cannot steer the initialisation away from such regions.
        rates = inner.lr * 0.5 ** jnp.arange(inner.line_search)
        squared = sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))
        candidates = jax.vmap(lambda r: jax.tree.map(lambda p, g: p - r * g, params, grads))(rates)
        values = jax.vmap(proximal)(candidates)
        accepted = values <= value - 0.5 * rates * squared
        # The first accepted rate; the smallest if none is.
        index = jnp.where(accepted.any(), jnp.argmax(accepted), inner.line_search - 1)
        return jax.tree.map(lambda c: c[index], candidates)

    adapt = make_adapt(inner_step)

    def task_grad(meta_params, task: TaskBatch, step):
        del step
        phi = jax.lax.stop_gradient(adapt(meta_params, task.support_x, task.support_y, inner.steps))
        (loss, metrics), query_grads = jax.value_and_grad(query_fn, has_aux=True)(
            phi, task.query_x, task.query_y
        )
        flat_phi, unravel = ravel_pytree(phi)

        def support_grad(flat):
            return ravel_pytree(jax.grad(loss_fn)(unravel(flat), task.support_x, task.support_y))[0]

        def matvec(v):
            hv = jax.jvp(support_grad, (flat_phi,), (v,))[1]
            return v + hv / lam

        solution = conjugate_gradient(matvec, ravel_pytree(query_grads)[0], inner.cg_steps)
        return {"params": unravel(solution)}, (loss, metrics)

    return Algorithm("imaml", lambda p: {"params": p}, task_grad, inner_step, adapt)
