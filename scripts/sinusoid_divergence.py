"""Why a K=5 sinusoid test task diverges over ten inner steps: the support loss's curvature.

Plain gradient descent with step α on a loss whose Hessian has top eigenvalue λ_max grows
along that eigenvector when α λ_max > 2. This script meta-tests a trained run on the
evaluator's K=5 test tasks, finds the tasks whose query loss after ten steps is not small,
and prints, for each inner step j, α λ_max of the support-loss Hessian at θ_j (dense, the
network has 1,761 parameters), beside the same for the median task.

    python scripts/sinusoid_divergence.py --workdir=runs/alg_maml_s0 [--shots=5] [--steps=10]
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from maml_dist import meta_test, trained_run
from maml_dist.problem import make_problem
from maml_dist.types import TEST_STREAM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--num_tasks", type=int, default=600)
    args = parser.parse_args()

    config = trained_run.load_run_config(args.workdir)
    if config.algorithm not in ("maml", "fomaml"):
        # The path below is plain SGD at inner_lr, the meta-test adaptation of these two only.
        sys.exit(
            f"this analysis replays plain SGD steps: a maml or fomaml run, not {config.algorithm}"
        )
    problem = make_problem(config)
    meta_params, step = trained_run.restore_params(config, args.workdir, None, problem)
    tasks = problem.fixed_tasks(config.seed, TEST_STREAM, args.num_tasks, args.shots, 100)
    curves = meta_test.adaptation_curves(
        problem.algorithm, meta_params, tasks, args.steps, (problem.score_fn,)
    )[..., 0]
    final = np.where(np.isfinite(curves[:, -1]), curves[:, -1], np.inf)
    order = np.argsort(final)
    median_task = int(order[len(order) // 2])
    worst = [int(i) for i in order[::-1][:3]]
    alpha = config.inner_lr
    print(f"checkpoint step {step}; K={args.shots}; alpha={alpha}; stable iff alpha*lambda_max < 2")

    for label, i in [("median", median_task)] + [("worst", i) for i in worst]:
        task = jax.tree.map(lambda a, i=i: jnp.asarray(a)[i], tasks)
        flat, unravel = ravel_pytree(meta_params["params"])

        def support(f, task=task, unravel=unravel):
            return problem.loss_fn(unravel(f), task.support_x, task.support_y)

        hessian = jax.jit(jax.hessian(support))
        grad = jax.jit(jax.grad(support))
        top = []
        for _ in range(args.steps + 1):
            top.append(alpha * float(np.linalg.eigvalsh(np.asarray(hessian(flat)))[-1]))
            flat = flat - alpha * grad(flat)
        print(
            f"{label:>6} task {i:3d}: query MSE after 0/1/{args.steps} steps "
            f"{curves[i, 0]:.3g}/{curves[i, 1]:.3g}/{curves[i, -1]:.3g}; "
            f"x = {np.round(np.asarray(task.support_x[:, 0]), 2).tolist()}; "
            f"alpha*lambda_max at θ_0..θ_{args.steps}: " + " ".join(f"{t:.2f}" for t in top)
        )


if __name__ == "__main__":
    main()
