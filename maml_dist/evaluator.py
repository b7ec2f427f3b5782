"""Meta-testing a checkpoint: restore, adapt on fixed test tasks, report with 95% CIs."""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from maml_dist import (
    checks,
    formatting,
    meta_test,
    parallel,
    plotting,
    recorded_split,
    recovery,
)
from maml_dist import state as state_lib
from maml_dist.checkpointing import Checkpointer, has_checkpoint
from maml_dist.data import omniglot_runs as omniglot_runs_lib
from maml_dist.problem import make_problem
from maml_dist.progress import Progress
from maml_dist.types import TEST_SEED, TEST_STREAM, TaskBatch


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
        saved = json.load(f)
    checks.check_run_format(saved, workdir)
    return ml_collections.ConfigDict(saved)


def restore_params(config: ml_collections.ConfigDict, workdir: str, step: int | None, problem=None):
    """Restores the meta-parameters of checkpoint `step` (default: the newest that restores).

    `problem` is the config's `Problem` if the caller has built it already.

    Returns:
        (meta_params, step).
    """
    problem = problem or make_problem(config)
    tx, _ = state_lib.make_meta_optimizer(config)
    target = state_lib.abstract_state(
        problem.model,
        problem.family.example_input(),
        tx,
        config.seed,
        problem.algorithm,
        parallel.replicated(parallel.make_mesh()),
    )
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=1, create=False)
    try:
        started = time.perf_counter()
        logging.info(
            "restoring the checkpoint at step %s...", ckpt.latest_step() if step is None else step
        )
        if step is None:
            # Damaged checkpoints are passed over but left in place: evaluation only reads.
            state, step, damaged = recovery.restore_newest(ckpt, target)
            for d in damaged:
                logging.warning(
                    "the checkpoint at step %d cannot be restored (%s); evaluating step %d",
                    d.step,
                    d.error,
                    step,
                )
        else:
            state = recovery.restore_step(ckpt, step, target)
        logging.info("restored step %d in %.1f s", step, time.perf_counter() - started)
    finally:
        ckpt.close()
    return state.meta_params, step


# Query sets of meta-testing: "standard" is the common protocol of few-shot papers (15
# images per class; 100 points per sinusoid); "maml_code" the original MAML code's (K per
# class, as its data generator draws 2K images per class and splits them in half).
PROTOCOLS = ("standard", "maml_code")


def evaluate(
    workdir: str,
    step: int | None = None,
    num_tasks: int = 600,
    shots: tuple[int, ...] | None = None,
    max_inner_steps: int = 10,
    test_seed: int = TEST_SEED,
    num_query: int | None = None,
    omniglot_runs: str | None = None,
    data_dir: str | None = None,
    protocol: str = "standard",
    allow_overlap: bool = False,
) -> dict:
    """Meta-tests a checkpoint on `num_tasks` fixed test tasks for each K in `shots`.

    Test tasks come from the test stream of `test_seed` (and, for classification, from the
    meta-test classes), which training never samples; the seed does not depend on the
    run's, so runs of any seed are scored on the same tasks. A classification run's data
    must give the class split it recorded in `DIR/split.json`. Writes
    `workdir/eval/results.json`, `curves.png` and an example picture (`example_fits.png`
    or `example_episode.png`).

    Args:
        workdir: the run directory.
        step: checkpoint step (default: the latest).
        num_tasks: test tasks per K.
        shots: support sizes K (default: 5, 10, 20 for regression; the run's K for
            classification, whose N is fixed by the network's head).
        max_inner_steps: report after 0..max_inner_steps inner steps.
        test_seed: seed of the test tasks.
        num_query: query points per task (regression) or query images per class
            (classification); overrides the protocol's.
        omniglot_runs: path of Lake et al.'s one-shot runs (folder or all_runs.zip), to
            report their error rates too (20-way classification runs only).
        data_dir: where the data set is now, if not where training read it.
        protocol: one of PROTOCOLS, the size of the query sets.
        allow_overlap: score the one-shot runs even when meta-training saw characters of
            their alphabets (the report says so).

    Returns:
        The results dict (see README for its shape).
    """
    if (
        num_tasks < 2
        or max_inner_steps < 0
        or (num_query is not None and num_query < 1)
        or (shots is not None and (not shots or min(shots) < 1))
    ):
        raise checks.UserInputError(
            "need --num_tasks >= 2, --max_inner_steps >= 0, --num_query >= 1 and positive "
            "--shots (e.g. --shots=5,10,20)"
        )
    protocol_asked = protocol
    if protocol not in PROTOCOLS:
        raise checks.UserInputError(
            f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}"
        )
    config = load_run_config(workdir)
    if data_dir is not None:
        if "data_dir" not in config:
            raise checks.UserInputError(
                f"--data_dir applies to runs that read a data set; {config.task!r} does not"
            )
        config.data_dir = data_dir
    problem = make_problem(config)
    family = problem.family
    classification = family.kind == "classification"
    if omniglot_runs is not None and (family.name != "omniglot" or config.ways != 20):
        raise checks.UserInputError(
            f"the one-shot runs are 20-way Omniglot problems; this run is {family.name!r}"
            + (f" {config.ways}-way" if family.name == "omniglot" else "")
            + ", so evaluate a 20-way run (e.g. configs/omniglot_minimal_20w1s.py)"
        )
    split = None
    if classification:
        split = family.split_record()
        checked = recorded_split.check(
            workdir,
            split,
            config.data_dir,
            "pass the data the run was trained on with --data_dir, or retrain on this data",
        )
        if not checked:
            logging.warning(
                "%s has no %s (the run predates split records), so the split rebuilt from "
                "the data is not checked against the one it was trained on",
                workdir,
                recorded_split.FILE,
            )
    runs, overlapping = None, []
    if omniglot_runs is not None:  # read before any compile, so bad files fail fast
        runs = omniglot_runs_lib.load_runs(omniglot_runs, config.omniglot.image_size)
        overlapping = omniglot_runs_lib.overlap(runs, split["train"])
        unknown = [r.name for r in runs if omniglot_runs_lib.run_alphabet(r.name) is None]
        if unknown and not allow_overlap:
            raise checks.UserInputError(
                f"cannot tell which alphabet one-shot run {unknown[0]!r} comes from (Lake et "
                f"al.'s are run01..run20), so not whether meta-training saw it; pass "
                f"--allow_overlap to score it regardless"
            )
        if overlapping and not allow_overlap:
            raise checks.UserInputError(
                f"this run meta-trained on characters of {len(overlapping)} of the one-shot "
                f"runs' alphabets ({', '.join(overlapping)}), so their error would not be a "
                f"held-out one; evaluate a run without them (e.g. configs/"
                f"omniglot_minimal_20w1s.py or configs/omniglot_lake_20w1s.py), or pass "
                f"--allow_overlap to report it marked as overlapping"
            )
    shots = shots or ((config.shots,) if classification else (5, 10, 20))
    protocol = protocol if num_query is None else "custom"
    if num_query is None:
        if protocol == "maml_code":
            # K per class (per task, for regression): the same for every K in `shots`.
            if len(set(shots)) > 1:
                raise checks.UserInputError(
                    f"--protocol=maml_code takes K queries per class, one K at a time; got "
                    f"--shots={','.join(map(str, shots))}"
                )
            num_query = shots[0]
        else:
            num_query = 15 if classification else 100
    elif protocol_asked == "maml_code":
        raise checks.UserInputError(
            "--protocol=maml_code sets the query size (K per class); drop --num_query"
        )
    meta_params, step = restore_params(config, workdir, step, problem)
    metrics = (problem.score_fn,)

    results, examples = [], []
    for k in shots:
        test = problem.fixed_tasks(test_seed, TEST_STREAM, num_tasks, k, num_query)
        curves = meta_test.adaptation_curves(
            problem.algorithm,
            meta_params,
            test,
            max_inner_steps,
            metrics,
            progress=Progress(f"meta-test K={k}", num_tasks, "tasks"),
            batching=config.get("task_batching", "auto"),
        )[..., 0]
        mean, ci = meta_test.mean_and_ci95(curves)
        result = {"shots": k}
        if classification:
            result["ways"] = config.ways
        results.append(
            {
                **result,
                "inner_steps": list(range(max_inner_steps + 1)),
                "mean": _json_numbers(mean),
                "ci95": _json_numbers(ci),
                "median": _json_numbers(meta_test.median(curves)),
                # Tasks whose loss is inf/nan after each step (a diverged inner loop); the
                # mean is then not finite and is written as null.
                "nonfinite": np.sum(~np.isfinite(curves), axis=0).tolist(),
            }
        )
        first = jax.device_put(
            jax.tree.map(lambda a: np.asarray(a)[0], test),
            jax.tree.leaves(meta_params)[0].sharding,
        )
        examples.append(_example(problem, meta_params, first, max_inner_steps))

    report = {
        "task": config.task,
        "metric": family.metric,
        "num_tasks": num_tasks,
        "step": int(step),
        # The test tasks: the same for every run with this seed (not the training seed).
        "test_seed": test_seed,
        "train_seed": config.seed,
        "protocol": protocol,
        "num_query": num_query,
        "algorithm": config.algorithm,
        # The configured rate; Meta-SGD adapts with its learned rates (this is their start).
        "inner_lr": config.inner_lr,
        "train_inner_steps": config.inner_steps,
        # What the protocol depends on: "transductive" batch norm normalises each query set
        # with its own statistics, "per_step_running" and "per_step_support" each image
        # alone (with running or with the support set's statistics; README, "Batch norm").
        "bn_mode": state_lib.resolve_bn_mode(config) if classification else None,
        # What the network computed in (runs before the field: float32).
        "compute_dtype": config.model.get("compute_dtype", "float32"),
        "meta_lr_schedule": state_lib.resolve_schedule(config),
        "results": results,
    }
    if split is not None:
        report["split"] = {
            "checked": checked,  # against DIR/split.json (False: the run predates it)
            "classes": {part: len(split[part]) for part in recorded_split.PARTS},
            "test_classes": recorded_split.names_digest(split["test"]),
            "checksum": split["checksum"],
        }
    if runs is not None:
        report["omniglot_runs"] = _one_shot_runs(
            problem, meta_params, runs, max_inner_steps, config.get("task_batching", "auto")
        )
        # Which of the runs' alphabets meta-training saw characters of (--allow_overlap),
        # and which runs' alphabets are unknown; both empty for a held-out error rate.
        report["omniglot_runs"].update(overlap=overlapping, unknown_alphabet=unknown)
    if jax.process_index() == 0:
        out = os.path.join(workdir, "eval")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(report, f, indent=2, allow_nan=False)
        plotting.save_curves(os.path.join(out, "curves.png"), results, family.metric)
        if classification:
            Image.fromarray(examples[0]).save(os.path.join(out, "example_episode.png"))
        else:
            plotting.save_example_fits(os.path.join(out, "example_fits.png"), examples)
    return report


def _one_shot_runs(problem, meta_params, runs, steps: int, batching: str) -> dict:
    """Error rate of each one-shot run after adapting `steps` steps on its 20 images."""
    tasks = TaskBatch(
        support_x=np.stack([r.support_x[..., None] for r in runs]),
        support_y=np.stack([np.arange(len(r.support_x), dtype=np.int32) for r in runs]),
        query_x=np.stack([r.query_x[..., None] for r in runs]),
        query_y=np.stack([r.query_y for r in runs]),
    )
    curves = meta_test.adaptation_curves(
        problem.algorithm,
        meta_params,
        tasks,
        steps,
        (problem.score_fn,),
        progress=Progress("one-shot runs", len(runs), "runs"),
        batching=batching,
    )
    errors = 1.0 - curves[:, -1, 0]
    return {
        "error_rate": float(errors.mean()),  # every run has 20 test items: the item mean
        "inner_steps": steps,
        "per_run": [
            {"run": r.name, "error_rate": float(e)} for r, e in zip(runs, errors, strict=True)
        ],
    }


def _json_numbers(values: np.ndarray) -> list[float | None]:
    """Floats for JSON, with inf/nan as null (standard JSON has no NaN)."""
    return [float(v) if np.isfinite(v) else None for v in values]


def _example(problem, meta_params, task, steps: int):
    """The example picture's data for one test task: a fit panel, or an episode image."""
    before, after = meta_test.adapted_predictions(
        problem.model, problem.algorithm, meta_params, task, steps, task.query_x
    )
    task, before, after = jax.device_get((task, before, after))
    if problem.family.kind == "classification":
        return plotting.episode_image(
            task.support_x,
            task.support_y,
            task.query_x,
            task.query_y,
            after.argmax(-1),
            ink=problem.family.ink,
        )
    return {
        "x": task.query_x[:, 0],
        "y_true": task.query_y[:, 0],
        "support_x": task.support_x[:, 0],
        "support_y": task.support_y[:, 0],
        "before": before[:, 0],
        "after": after[:, 0],
        "steps": steps,
    }


def shown_steps(last: int, trained: int | None) -> list[int]:
    """The inner-step counts the table shows: 0, 1, 5, the training count and the last."""
    wanted = {0, 1, 5, last} | ({trained} if trained is not None else set())
    return sorted(s for s in wanted if s <= last)


def format_table(report: dict) -> str:
    """A plain-text table: one row per K, a column per shown inner-step count.

    The columns are after 0, 1, 5, the training count and the last inner step (every count
    is in results.json and curves.png).
    """
    metric, n = report["metric"], report["num_tasks"]
    steps = shown_steps(report["results"][0]["inner_steps"][-1], report.get("train_inner_steps"))
    header = ["K"] + [
        f"{s} step{'s' * (s != 1)}" + (" (trained)" if s == report.get("train_inner_steps") else "")
        for s in steps
    ]
    body = [
        [str(r["shots"])]
        + [
            formatting.cell(
                r["mean"][s], r["ci95"][s], r["median"][s], r["nonfinite"][s], n, metric
            )
            for s in steps
        ]
        for r in report["results"]
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    title = f"query {metric} (mean ± 95% CI) over {n} test tasks; checkpoint step {report['step']}"
    if "ways" in report["results"][0]:
        title += f"; {report['results'][0]['ways']}-way, K = shots per class"
    rows = [title, "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    rows.append("  ".join("-" * w for w in widths))
    rows += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    runs = report.get("omniglot_runs")
    if runs:
        rows.append(
            f"one-shot runs (Lake et al. 2015), error after {runs['inner_steps']} inner "
            f"steps: {100 * runs['error_rate']:.1f}% overall"
        )
        rows.extend(f"  {r['run']}: {100 * r['error_rate']:.1f}%" for r in runs["per_run"])
    return "\n".join(rows)
