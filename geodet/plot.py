"""Figures of geodet's reports (matplotlib; no pyplot state, safe without a display).

Each function draws on a given matplotlib ``Axes`` and returns it, or, given a
file path, draws a new figure and writes it atomically as PNG with the Agg
canvas.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable, Tuple


def plot_pr_curve(report: dict, path_or_ax):
    """Precision-recall curves of an evaluation report, one per class.

    Args:
        report: a report of :func:`geodet.evaluation.evaluate` or
            :func:`~geodet.evaluation.evaluate_boxes` (uses ``iou`` and each
            class's ``pr_curve`` and ``ap``).
        path_or_ax: a matplotlib ``Axes`` to draw on, or a PNG path to write.

    Returns:
        The ``Axes`` drawn on, or the path written.
    """
    iou = report.get("iou", 0.5)

    def draw(ax) -> None:
        for name, metrics in sorted(report["classes"].items()):
            curve = metrics.get("pr_curve") or {}
            if not curve.get("recall"):
                continue  # a class without truth has no curve
            ap = metrics.get("ap")
            label = f"{name} (AP{round(iou * 100)} {ap:.3f})" if ap is not None else name
            ax.plot(curve["recall"], curve["precision"], drawstyle="steps-post", label=label)
        ax.set_xlabel("Recall")
        ax.set_ylabel("Precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"Precision-recall at IoU {iou:g}")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower left")

    return _draw_or_save(draw, path_or_ax, figsize=(6, 5))


def _draw_or_save(draw: Callable, path_or_ax, *, figsize: Tuple[float, float]):
    """Call ``draw(ax)`` on the given Axes, or on a new figure saved atomically to a PNG path."""
    if hasattr(path_or_ax, "plot"):
        draw(path_or_ax)
        return path_or_ax
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = os.fspath(path_or_ax)
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    draw(fig.add_subplot(1, 1, 1))
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
