"""The meta-test report as a plain-text table, as `maml_dist.evaluate` prints it."""

from __future__ import annotations

from maml_dist import formatting


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
