"""Meta-testing a checkpoint: adapt on fixed test tasks, report with 95% CIs, write eval/."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import logging
from PIL import Image

from maml_dist import checks, meta_test, plotting, recorded_split
from maml_dist import state as state_lib
from maml_dist.data import omniglot_runs as omniglot_runs_lib
from maml_dist.problem import Problem, make_problem
from maml_dist.progress import Progress
from maml_dist.trained_run import load_run_config, restore_params
from maml_dist.types import TEST_SEED, TEST_STREAM, TaskBatch

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
    _check_sizes(num_tasks, max_inner_steps, num_query, shots)
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
    split, checked = _checked_split(workdir, config, problem)
    runs, overlapping, unknown = None, [], []
    if omniglot_runs is not None:  # read before any compile, so bad files fail fast
        runs, overlapping, unknown = _held_out_runs(omniglot_runs, config, split, allow_overlap)
    shots = shots or ((config.shots,) if classification else (5, 10, 20))
    protocol, num_query = _query_size(protocol, num_query, shots, classification)
    meta_params, step = restore_params(config, workdir, step, problem)
    results, examples = _meta_test(
        config, problem, meta_params, shots, num_tasks, num_query, max_inner_steps, test_seed
    )
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
        _write(os.path.join(workdir, "eval"), report, examples, family)
    return report


def _check_sizes(num_tasks: int, max_inner_steps: int, num_query, shots) -> None:
    """Refuses test-set sizes that cannot give a mean and a confidence interval."""
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


def _checked_split(workdir: str, config, problem: Problem) -> tuple[dict | None, bool]:
    """A classification run's class split, checked against the one it recorded.

    Returns:
        (the split record, or None for families without classes; whether `DIR/split.json`
        was there to check it against).
    """
    if problem.family.kind != "classification":
        return None, False
    split = problem.family.split_record()
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
    return split, checked


def _held_out_runs(path: str, config, split: dict, allow_overlap: bool):
    """Lake et al.'s one-shot runs, refused where meta-training saw their alphabets.

    Returns:
        (the runs, the alphabets meta-training saw characters of, the runs whose alphabet
        is unknown): both lists empty unless `allow_overlap`.
    """
    runs = omniglot_runs_lib.load_runs(path, config.omniglot.image_size)
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
    return runs, overlapping, unknown


def _query_size(protocol: str, num_query, shots, classification: bool) -> tuple[str, int]:
    """(the protocol reported, the query size): `num_query` when given ("custom")."""
    if num_query is not None:
        if protocol == "maml_code":
            raise checks.UserInputError(
                "--protocol=maml_code sets the query size (K per class); drop --num_query"
            )
        return "custom", num_query
    if protocol == "maml_code":
        # K per class (per task, for regression): the same for every K in `shots`.
        if len(set(shots)) > 1:
            raise checks.UserInputError(
                f"--protocol=maml_code takes K queries per class, one K at a time; got "
                f"--shots={','.join(map(str, shots))}"
            )
        return protocol, shots[0]
    return protocol, 15 if classification else 100


def _meta_test(config, problem, meta_params, shots, num_tasks, num_query, steps, test_seed):
    """Adaptation curves on the fixed test tasks of each K: (results rows, example data)."""
    results, examples = [], []
    for k in shots:
        test = problem.fixed_tasks(test_seed, TEST_STREAM, num_tasks, k, num_query)
        curves = meta_test.adaptation_curves(
            problem.algorithm,
            meta_params,
            test,
            steps,
            (problem.score_fn,),
            progress=Progress(f"meta-test K={k}", num_tasks, "tasks"),
            batching=config.get("task_batching", "auto"),
        )[..., 0]
        mean, ci = meta_test.mean_and_ci95(curves)
        result = {"shots": k}
        if problem.family.kind == "classification":
            result["ways"] = config.ways
        results.append(
            {
                **result,
                "inner_steps": list(range(steps + 1)),
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
        examples.append(_example(problem, meta_params, first, steps))
    return results, examples


def _write(out: str, report: dict, examples: list, family) -> None:
    """Writes `out/results.json`, `curves.png` and the example picture."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(report, f, indent=2, allow_nan=False)
    plotting.save_curves(os.path.join(out, "curves.png"), report["results"], family.metric)
    if family.kind == "classification":
        Image.fromarray(examples[0]).save(os.path.join(out, "example_episode.png"))
    else:
        plotting.save_example_fits(os.path.join(out, "example_fits.png"), examples)


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
