"""Meta-testing a checkpoint: restore, adapt on fixed test tasks, report with 95% CIs."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np

from maml_dist import checks, meta_test, parallel, plotting, tasks
from maml_dist import state as state_lib
from maml_dist.checkpointing import Checkpointer, has_checkpoint
from maml_dist.problem import make_problem
from maml_dist.tasks.base import TEST_STREAM


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a training run wrote to `workdir/config.json`.

    Raises:
        checks.UserInputError: if the workdir holds no trained run.
    """
    path = os.path.join(workdir, "config.json")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.exists(path) or not has_checkpoint(ckpt_dir):
        raise checks.UserInputError(
            f"no checkpoint in {ckpt_dir!r}; train first with "
            f"`python -m maml_dist.train --config=configs/sinusoid.py --workdir={workdir}`"
        )
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def restore_params(config: ml_collections.ConfigDict, workdir: str, step: int | None):
    """Restores the meta-parameters of checkpoint `step` (default: the latest).

    Returns:
        (params, step).
    """
    family = tasks.make_task_family(config)
    tx, _ = state_lib.make_meta_optimizer(config)
    target = state_lib.abstract_state(
        family.make_model(),
        family.example_input(),
        tx,
        config.seed,
        parallel.replicated(parallel.make_mesh()),
    )
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=1, create=False)
    try:
        steps = ckpt.all_steps()
        step = steps[-1] if step is None else step
        if step not in steps:
            raise checks.UserInputError(
                f"no checkpoint at step {step} in {ckpt.directory!r}; available steps: {steps}"
            )
        state = ckpt.restore(step, target)
    finally:
        ckpt.close()
    return state.params, step


def evaluate(
    workdir: str,
    step: int | None = None,
    num_tasks: int = 600,
    shots: tuple[int, ...] = (5, 10, 20),
    max_inner_steps: int = 10,
    seed: int | None = None,
    num_query: int = 100,
) -> dict:
    """Meta-tests a checkpoint on `num_tasks` fixed test tasks for each K in `shots`.

    Test tasks come from the seed's test stream, which training never samples. Writes
    `workdir/eval/results.json`, `curves.png` and `example_fits.png`.

    Returns:
        The results dict (see README for its shape).
    """
    if num_tasks < 2 or max_inner_steps < 0 or num_query < 1 or not shots or min(shots) < 1:
        raise checks.UserInputError(
            "need --num_tasks >= 2, --max_inner_steps >= 0, --num_query >= 1 and positive "
            "--shots (e.g. --shots=5,10,20)"
        )
    config = load_run_config(workdir)
    seed = config.seed if seed is None else seed
    params, step = restore_params(config, workdir, step)
    problem = make_problem(config)
    family, model, loss_fn = problem.family, problem.model, problem.loss_fn

    results, examples = [], []
    for k in shots:
        test = meta_test.sample_tasks(family, seed, TEST_STREAM, num_tasks, k, num_query)
        test = jax.device_put(jax.device_get(test), jax.tree.leaves(params)[0].sharding)
        curves = meta_test.adaptation_curves(
            loss_fn, params, test, config.inner_lr, max_inner_steps
        )
        curves = jax.device_get(curves)
        mean, ci = meta_test.mean_and_ci95(curves)
        results.append(
            {
                "shots": k,
                "inner_steps": list(range(max_inner_steps + 1)),
                "mean": _json_numbers(mean),
                "ci95": _json_numbers(ci),
                "median": _json_numbers(meta_test.median(curves)),
                # Tasks whose loss is inf/nan after each step (a diverged inner loop); the
                # mean is then not finite and is written as null.
                "nonfinite": np.sum(~np.isfinite(curves), axis=0).tolist(),
            }
        )
        examples.append(_example(model, loss_fn, params, test, config.inner_lr, max_inner_steps))

    report = {
        "task": config.task,
        "metric": family.metric,
        "num_tasks": num_tasks,
        "step": int(step),
        "seed": seed,
        "num_query": num_query,
        "inner_lr": config.inner_lr,
        "results": results,
    }
    if jax.process_index() == 0:
        out = os.path.join(workdir, "eval")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(report, f, indent=2, allow_nan=False)
        plotting.save_curves(os.path.join(out, "curves.png"), results, family.metric)
        plotting.save_example_fits(os.path.join(out, "example_fits.png"), examples)
    return report


def _json_numbers(values: np.ndarray) -> list[float | None]:
    """Floats for JSON, with inf/nan as null (standard JSON has no NaN)."""
    return [float(v) if np.isfinite(v) else None for v in values]


def _example(model, loss_fn, params, test, lr: float, steps: int) -> dict:
    """Arrays for an example-fit panel of the first test task (query points as the curve)."""
    task = jax.tree.map(lambda a: a[0], test)
    before, after = meta_test.adapted_predictions(
        model, loss_fn, params, task, lr, steps, task.query_x
    )
    task, before, after = jax.device_get((task, before, after))
    return {
        "x": task.query_x[:, 0],
        "y_true": task.query_y[:, 0],
        "support_x": task.support_x[:, 0],
        "support_y": task.support_y[:, 0],
        "before": before[:, 0],
        "after": after[:, 0],
        "steps": steps,
    }


def format_table(report: dict) -> str:
    """A plain-text table: one row per K, one column per inner-step count."""
    steps = report["results"][0]["inner_steps"]
    head = f"{'K':>4} | " + " | ".join(f"{s:>17}" for s in steps)
    rows = [
        f"query {report['metric']} (mean ± 95% CI) over {report['num_tasks']} test tasks "
        f"after each inner step; checkpoint step {report['step']}",
        head,
        "-" * len(head),
    ]
    for r in report["results"]:
        cells = " | ".join(
            f"{m:8.4g} ± {c:<6.2g}" if m is not None and c is not None else f"{'not finite':>17}"
            for m, c in zip(r["mean"], r["ci95"], strict=True)
        )
        rows.append(f"{r['shots']:>4} | {cells}")
    return "\n".join(rows)
