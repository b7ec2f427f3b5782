"""Matplotlib figures: adaptation snapshots for TensorBoard, meta-test curves and fits."""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def _pyplot():
    """`matplotlib.pyplot`, imported on first use.

    Importing it takes about 0.3 s, a tenth of the sinusoid trainer's start-up, and the
    trainer draws nothing before its first validation.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers or CI
    import matplotlib.pyplot as plt

    return plt


def _figure(**kwargs):
    """A matplotlib `Figure` on its own Agg canvas, outside pyplot.

    pyplot keeps a global registry of figures that is not thread-safe; the trainer draws
    its TensorBoard images in a thread, so those never go through it (nor import it).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _to_rgb(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _draw_fit(ax, x, y_true, support_x, support_y, before, after, steps: int) -> None:
    order = np.argsort(x)
    ax.plot(x[order], y_true[order], color="tab:red", label="ground truth")
    ax.plot(x[order], before[order], ":", color="tab:green", label="pre-update")
    ax.plot(x[order], after[order], "--", color="tab:green", label=f"{steps} grad step(s)")
    ax.scatter(support_x, support_y, marker="^", color="tab:purple", zorder=3, label="support")


class AdaptationFigure:
    """The paper-style figure of one task, drawn again for each new pair of predictions.

    The trainer's validation pictures the same task every time; building the figure
    (axes, legend, layout) costs as much again as drawing it (40 ms a figure against 18
    ms a redraw on this CPU). Not thread-safe: one thread draws it.
    """

    def __init__(self, x, y_true, support_x, support_y, steps: int):
        self.order = np.argsort(x)
        self.support = np.c_[np.asarray(support_x, float), np.asarray(support_y, float)]
        self.fig = _figure(figsize=(5, 3.5), dpi=80)
        self.ax = self.fig.subplots()
        nan = np.full_like(np.asarray(x, float), np.nan)
        _draw_fit(self.ax, x, y_true, support_x, support_y, nan, nan, steps)
        self.before, self.after = self.ax.get_lines()[1:3]
        self.ax.legend(fontsize=7, loc="lower right")
        # Fixed margins: a layout fitted to one set of tick labels may clip the next.
        self.fig.subplots_adjust(left=0.1, right=0.98, bottom=0.08, top=0.97)

    def image(self, before, after) -> np.ndarray:
        """The figure with these predictions, as an (H, W, 3) uint8 image."""
        self.before.set_ydata(np.asarray(before)[self.order])
        self.after.set_ydata(np.asarray(after)[self.order])
        self.ax.relim()
        # relim counts scatter points only from matplotlib 3.11 on.
        self.ax.update_datalim(self.support)
        self.ax.autoscale_view()
        return _to_rgb(self.fig)


def adaptation_image(x, y_true, support_x, support_y, before, after, steps: int) -> np.ndarray:
    """Paper-style figure of one task as an (H, W, 3) uint8 image for TensorBoard."""
    return AdaptationFigure(x, y_true, support_x, support_y, steps).image(before, after)


def save_curves(path: str, results: list[dict], metric: str) -> None:
    """Saves metric (mean with 95% CI band) against inner steps, one line per shot count."""
    fig, ax = _pyplot().subplots(figsize=(5, 3.5), dpi=100)
    any_positive = False
    for r in results:
        # null (non-finite) entries become nan: matplotlib leaves a gap there.
        steps, mean, ci = (np.asarray(r[k], dtype=float) for k in ("inner_steps", "mean", "ci95"))
        ax.plot(steps, mean, marker="o", ms=3, label=f"K={r['shots']}")
        ax.fill_between(steps, mean - ci, mean + ci, alpha=0.2)
        any_positive |= bool(np.any(np.isfinite(mean) & (mean > 0)))
    ax.set_xlabel("inner gradient steps")
    ax.set_ylabel(f"query {metric}")
    # A run whose every task diverged has nothing to draw on a log axis (matplotlib raises).
    if metric == "mse" and any_positive:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    _pyplot().close(fig)


def save_comparison(path: str, names: list[str], results: list[list[dict]], metric: str) -> None:
    """Saves one panel per shot count K, each run's mean curve with its 95% CI band.

    Args:
        path: the PNG to write.
        names: one label per run.
        results: per run, the `results` list of its `eval/results.json`.
        metric: the metric's name (a log axis for "mse").
    """
    panels = len(results[0])
    fig, axes = _pyplot().subplots(1, panels, figsize=(4.5 * panels, 3.5), dpi=100, squeeze=False)
    for j, ax in enumerate(axes[0]):
        any_positive = False
        for name, run in zip(names, results, strict=True):
            r = run[j]
            steps, mean, ci = (
                np.asarray(r[k], dtype=float) for k in ("inner_steps", "mean", "ci95")
            )
            ax.plot(steps, mean, marker="o", ms=3, label=name)
            ax.fill_between(steps, mean - ci, mean + ci, alpha=0.2)
            any_positive |= bool(np.any(np.isfinite(mean) & (mean > 0)))
        if metric == "mse" and any_positive:
            ax.set_yscale("log")
        ax.set_title(f"K={results[0][j]['shots']}")
        ax.set_xlabel("inner gradient steps")
        ax.set_ylabel(f"query {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    _pyplot().close(fig)


def save_example_fits(path: str, examples: list[dict]) -> None:
    """Saves a row of example fits; each example holds the `_draw_fit` arrays."""
    fig, axes = _pyplot().subplots(1, len(examples), figsize=(4 * len(examples), 3.2), dpi=100)
    for ax, ex in zip(np.atleast_1d(axes), examples, strict=True):
        _draw_fit(ax, **ex)
        ax.set_title(f"K={len(ex['support_x'])}")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    _pyplot().close(fig)


def episode_image(
    support_x, support_y, query_x, query_y, predicted, max_queries: int = 5, ink: bool = True
) -> np.ndarray:
    """One classification episode as an (H, W, 3) uint8 image for TensorBoard.

    A row per class (by label): its support images, a gap, then up to `max_queries` of its
    query images, each framed green when the adapted network's predicted label is right and
    red when wrong, with the predicted label written under it.

    Args:
        support_x: (B, H, W, C) uint8 support images, C = 1 (grayscale) or 3 (RGB).
        support_y: their labels.
        query_x: the query images, likewise.
        query_y: their labels.
        predicted: the adapted network's label of each query image.
        max_queries: query images shown per class.
        ink: the images are ink (255) on a blank page (0), as Omniglot's: drawn dark on
            white. Otherwise pixels are drawn as they are.
    """
    support_x, query_x = np.asarray(support_x), np.asarray(query_x)
    ways = int(np.max(support_y)) + 1
    size = support_x.shape[1]
    cell = size + 4  # a 2-pixel frame on every side
    shots = int(np.sum(np.asarray(support_y) == 0))
    queries = min(max_queries, int(np.sum(np.asarray(query_y) == 0)))
    columns = shots + 1 + queries
    canvas = np.ones((ways * cell, columns * cell, 3), np.float32)
    colors = {None: (0.6, 0.6, 0.6), True: (0.1, 0.7, 0.1), False: (0.9, 0.1, 0.1)}
    labels = []

    def put(row, col, image, correct):
        y, x = row * cell, col * cell
        canvas[y : y + cell, x : x + cell] = colors[correct]
        pixels = image / 255.0  # (H, W, C): one channel spreads over the three
        canvas[y + 2 : y + 2 + size, x + 2 : x + 2 + size] = 1.0 - pixels if ink else pixels

    for c in range(ways):
        for j, i in enumerate(np.flatnonzero(np.asarray(support_y) == c)[:shots]):
            put(c, j, support_x[i], None)
        for j, i in enumerate(np.flatnonzero(np.asarray(query_y) == c)[:queries]):
            put(c, shots + 1 + j, query_x[i], bool(predicted[i] == c))
            labels.append((c, shots + 1 + j, int(predicted[i])))
    scale = 0.02
    fig = _figure(figsize=(columns * cell * scale + 0.6, ways * cell * scale + 0.5))
    ax = fig.subplots()
    ax.imshow(canvas, interpolation="nearest")
    for row, col, label in labels:
        ax.text(
            col * cell + cell / 2,
            row * cell + cell - 3,
            str(label),
            ha="center",
            va="bottom",
            fontsize=6,
            color="tab:blue",
        )
    ax.set_xticks([(shots - 1) * cell / 2 + cell / 2, (shots + 1 + (queries - 1) / 2) * cell + 2])
    ax.set_xticklabels(["support", "query (predicted label)"], fontsize=7)
    ax.set_yticks(np.arange(ways) * cell + cell / 2)
    ax.set_yticklabels([str(c) for c in range(ways)], fontsize=6)
    fig.tight_layout()
    return _to_rgb(fig)
