"""Runs side by side: one table and one figure from several runs' meta-test results.

Each run's `config.json` and `eval/results.json` are read and checked to have been
meta-tested alike (same tasks, same scoring) before anything is compared.
"""

from __future__ import annotations

import dataclasses
import json
import os

from maml_dist import formatting, plotting
from maml_dist.errors import UserInputError
from maml_dist.resume_checks import RESUMABLE_CHANGES, with_later_fields

# Config fields that change neither the training nor the test: not worth a column.
_NOT_COMPARED = (RESUMABLE_CHANGES - {"num_steps"}) | {"omniglot.cache_dir"}
# What makes two meta-tests comparable: the same tasks, scored the same way.
_TASK_SET = ("task", "metric", "test_seed", "num_tasks", "num_query", "protocol")


@dataclasses.dataclass(frozen=True)
class Run:
    """One run's saved config (flattened, `a.b` keys) and meta-test report."""

    name: str
    config: dict
    report: dict


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def load_run(workdir: str) -> Run:
    """Reads `workdir/config.json` and `workdir/eval/results.json`.

    Raises:
        UserInputError: naming the missing file and the command that writes it.
    """
    paths = {
        "config": (os.path.join(workdir, "config.json"), "python -m maml_dist.train"),
        "report": (
            os.path.join(workdir, "eval", "results.json"),
            f"python -m maml_dist.evaluate --workdir={workdir}",
        ),
    }
    loaded = {}
    for what, (path, command) in paths.items():
        try:
            with open(path) as f:
                loaded[what] = json.load(f)
        except FileNotFoundError:
            raise UserInputError(f"{path} does not exist; write it with `{command}`") from None
        except json.JSONDecodeError as e:
            raise UserInputError(f"{path} is not valid JSON ({e.msg}, line {e.lineno})") from None
    name = os.path.basename(os.path.normpath(workdir))
    # Fields newer than the run get the values it ran with, not a column of their own.
    return Run(name, _flatten(with_later_fields(loaded["config"])), loaded["report"])


def _protocol(report: dict) -> dict:
    """The task set and scoring of a meta-test, field by field."""
    protocol = {k: report.get(k) for k in _TASK_SET}
    if "test_seed" not in report:  # reports before 0.3 drew test tasks with the run's seed
        protocol["test_seed"] = report.get("seed")
        protocol["protocol"] = "standard" if report.get("num_query") in (15, 100) else "custom"
    # Classification: the same meta-test classes, from the same images.
    split = report.get("split") or {}
    protocol["meta-test classes"] = split.get("test_classes")
    protocol["data checksum"] = split.get("checksum")
    for r in report["results"]:
        k = r["shots"]
        protocol[f"ways (K={k})"] = r.get("ways")
        protocol[f"inner steps (K={k})"] = r["inner_steps"]
    protocol["shots"] = [r["shots"] for r in report["results"]]
    return protocol


def check_comparable(runs: list[Run]) -> None:
    """Raises UserInputError, in one line, if the runs were meta-tested differently."""
    if len(runs) < 2:
        raise UserInputError("give at least two run directories to compare")
    first = _protocol(runs[0].report)
    for run in runs[1:]:
        other = _protocol(run.report)
        for field, value in first.items():
            if other.get(field) != value:
                raise UserInputError(
                    f"{runs[0].name} and {run.name} were meta-tested differently ({field}: "
                    f"{value!r} against {other.get(field)!r}); re-run `python -m "
                    f"maml_dist.evaluate` on both with the same --test_seed, --protocol, "
                    f"--num_tasks, --shots, --num_query and --max_inner_steps (and data)"
                )


def differing_fields(runs: list[Run]) -> list[str]:
    """Config fields whose values differ between the runs (ignoring logging and paths)."""
    keys = sorted(set().union(*(r.config for r in runs)) - _NOT_COMPARED)
    return [k for k in keys if len({json.dumps(r.config.get(k)) for r in runs}) > 1]


def table(runs: list[Run]) -> str:
    """The comparison as text, one row per run.

    Columns: the config fields that differ, then the metric after 1 and after the last
    inner step for every K.
    """
    fields = differing_fields(runs)
    metric = runs[0].report["metric"]
    columns = []  # (header, function of a run)
    for j, result in enumerate(runs[0].report["results"]):
        last = result["inner_steps"][-1]
        for step in sorted({min(1, last), last}):
            header = f"K={result['shots']}, {step} step{'s' * (step != 1)}"
            columns.append((header, lambda run, j=j, s=step: _cell(run, j, s, metric)))
    header = ["run", *fields, *(h for h, _ in columns)]
    rows = [[run.name, *(_short(run.config.get(f)) for f in fields)] for run in runs]
    for row, run in zip(rows, runs, strict=True):
        row.extend(cell(run) for _, cell in columns)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    lines = [
        f"query {metric} (mean ± 95% CI) over {runs[0].report['num_tasks']} test tasks, "
        f"test seed {_protocol(runs[0].report)['test_seed']}",
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _cell(run: Run, result_index: int, step: int, metric: str) -> str:
    result = run.report["results"][result_index]
    return formatting.mean_ci(result["mean"][step], result["ci95"][step], metric)


def _short(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def save_figure(path: str, runs: list[Run]) -> None:
    """One panel per K: each run's adaptation curve with its 95% CI band."""
    plotting.save_comparison(
        path,
        [run.name for run in runs],
        [run.report["results"] for run in runs],
        runs[0].report["metric"],
    )
