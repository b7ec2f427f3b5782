"""Numbers as people read them: fixed notation, sensible digits, the median when it matters."""

from __future__ import annotations

import math


def _digits(value: float) -> int:
    """Decimals that show three significant digits of `value` (at least one)."""
    if value == 0 or not math.isfinite(value):
        return 3
    return max(1, 2 - math.floor(math.log10(abs(value))))


def number(value: float | None, metric: str) -> str:
    """`value` in fixed notation: accuracies in percent, losses to three significant digits."""
    if value is None or not math.isfinite(value):
        return "not finite"
    if metric == "accuracy":
        return f"{100 * value:.1f}%"
    return f"{value:.{_digits(value)}f}"


def mean_ci(mean: float | None, ci: float | None, metric: str) -> str:
    """`mean ± ci`, the CI with the mean's decimals (accuracies in percentage points)."""
    if mean is None or ci is None or not math.isfinite(mean):
        return "not finite"
    if metric == "accuracy":
        return f"{100 * mean:.1f}% ± {100 * ci:.1f}"
    d = _digits(mean)
    return f"{mean:.{d}f} ± {ci:.{d}f}"


def cell(mean, ci, median, nonfinite: int, num_tasks: int, metric: str) -> str:
    """A result cell: mean ± CI, and the median when a few tasks dominate the mean.

    The median is shown beside the mean when they differ by more than a factor of 3 (a
    skewed loss such as the sinusoid's MSE has its mean at ~2x its median without any task
    dominating); with non-finite tasks (diverged inner loops) only the median, and how many
    tasks diverged.
    """
    if nonfinite:
        return f"median {number(median, metric)} ({nonfinite} of {num_tasks} not finite)"
    text = mean_ci(mean, ci, metric)
    if median is not None and median > 0 and mean is not None and not 1 / 3 < mean / median < 3:
        text += f" (median {number(median, metric)})"
    return text
