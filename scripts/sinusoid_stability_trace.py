"""How a sinusoid run drifts toward an unstable inner loop: curvature and learned rates.

Meta-trains with the Python API (`maml_dist.make_learner`, a constant meta learning rate)
and, every `--chunk` meta-steps, prints on 500 fixed tasks (stream 0, seed 123: the same
tasks at every report, not the run's own):

- λ, the eigenvalue of largest magnitude of each task's support-loss Hessian at θ₀ (50
  power iterations of Hessian-vector products, then its Rayleigh quotient, so with its
  sign): plain gradient descent with step α grows along its eigenvector when α λ > 2
  (`scripts/sinusoid_divergence.py` looks at one trained run);
- the learned inner rates (Meta-SGD's; MAML++'s with LSLR): their least, median and
  greatest value;
- the query MSE after the trained number of inner steps: its median and its worst task.

It stops at the first non-finite meta-step (`maml_dist.NonFiniteError`), naming it, with
exit status 1.

    python scripts/sinusoid_stability_trace.py --algorithm=mamlpp --inner_steps=5
        [--learned_lr_scale=1] [--msl_anneal_steps=7000] [--doa_steps=0] [--chunks=40]
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

import maml_dist as md
from maml_dist.types import RATES


def dominant_eigenvalue(loss_fn, params, x, y, iterations: int = 50) -> jax.Array:
    """The largest-magnitude eigenvalue of the Hessian of `loss_fn(·, x, y)` at `params`.

    Power iteration finds its eigenvector; the Rayleigh quotient v·Hv gives its sign. Where
    the two extreme eigenvalues are nearly opposite (±λ), the iteration does not settle
    and the quotient falls short of |λ|.
    """
    grad = jax.grad(loss_fn)

    def hvp(v):
        return jax.jvp(lambda p: grad(p, x, y), (params,), (v,))[1]

    def norm(tree):
        return jnp.sqrt(sum(jnp.vdot(a, a) for a in jax.tree.leaves(tree)))

    def body(v, _):
        hv = hvp(v)
        size = norm(hv)
        return jax.tree.map(lambda a: a / size, hv), None

    start = jax.tree.map(jnp.ones_like, params)
    start = jax.tree.map(lambda a: a / norm(start), start)
    v = jax.lax.scan(body, start, None, length=iterations)[0]
    pairs = zip(jax.tree.leaves(v), jax.tree.leaves(hvp(v)), strict=True)
    return sum(jnp.vdot(a, b) for a, b in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", default="mamlpp", choices=sorted(md.ALGORITHMS))
    parser.add_argument("--inner_steps", type=int, default=5)
    parser.add_argument("--inner_lr", type=float, default=0.01)
    parser.add_argument("--learned_lr_scale", type=float, default=1.0)
    parser.add_argument("--msl_anneal_steps", type=int, default=7000, help="MAML++ only")
    parser.add_argument("--doa_steps", type=int, default=0, help="MAML++ only")
    parser.add_argument("--chunks", type=int, default=40)
    parser.add_argument("--chunk", type=int, default=250, help="meta-steps between reports")
    args = parser.parse_args()

    inner = md.InnerConfig(
        lr=args.inner_lr,
        steps=args.inner_steps,
        msl_anneal_steps=args.msl_anneal_steps,
        doa_steps=args.doa_steps,
    )
    config = md.MetaConfig(
        algorithm=args.algorithm, inner=inner, learned_lr_scale=args.learned_lr_scale
    )
    learner = md.make_learner(config, md.Sinusoid())
    tasks = md.sample_tasks(learner, num_tasks=500, stream=0, seed=123)
    eigenvalues = jax.jit(
        jax.vmap(lambda p, x, y: dominant_eigenvalue(learner.loss_fn, p, x, y), (None, 0, 0))
    )
    print(f"{config}\n")
    print(
        "  step  meta-loss        λ: median    p99    max  rates: min  median    max"
        f"  query after {args.inner_steps}: median    max"
    )
    state = learner.init()
    for chunk in range(1, args.chunks + 1):
        try:
            state, metrics = learner.run(state, args.chunk)
        except md.NonFiniteError as e:
            print(f"stopped: {e}")
            sys.exit(1)
        meta = state.meta_params
        lam = np.asarray(eigenvalues(meta["params"], tasks.support_x, tasks.support_y))
        rates = "     -       -      -"
        if RATES in meta:
            r = np.concatenate([np.ravel(a) for a in jax.tree.leaves(meta[RATES])])
            rates = f"{r.min():7.3f} {np.median(r):7.4f} {r.max():6.3f}"
        after = md.evaluate(learner, meta, tasks, num_steps=args.inner_steps)["per_task"][:, -1]
        print(
            f"{chunk * args.chunk:6d} {float(metrics['meta_loss'][-1]):10.3f}"
            f"  {np.median(lam):13.0f} {np.percentile(lam, 99):6.0f} {lam.max():6.0f}"
            f"  {rates}  {np.median(after):20.3f} {np.nanmax(after):6.3g}",
            flush=True,
        )


if __name__ == "__main__":
    main()
