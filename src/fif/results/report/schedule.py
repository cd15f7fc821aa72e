"""Plot learning-rate schedules over a whole stream (PNG, SVG or PDF, by the path's suffix).

Kept apart from :mod:`fif.train.schedules` so the schedules stay pure and importing them never pulls in
matplotlib. Uses a bare ``Figure`` (Agg canvas): no pyplot, no global backend state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from fif.core.io import atomic_save_figure
from fif.train.schedules import ScheduleSpec, stream_curve

LAYOUTS = ("overlay", "grid")


def _label(spec: ScheduleSpec, specs: Sequence[ScheduleSpec]) -> str:
    """The name, plus the fields that tell this spec apart from others of the same name."""
    same = [s for s in specs if s.name == spec.name]
    if len(same) == 1:
        return spec.name
    fields = ("lr", "lr_min_ratio", "warmup_frac", "cooldown_frac", "decay_frac", "anneal_shape")
    differing = [f for f in fields if len({getattr(s, f) for s in same}) > 1]
    return f"{spec.name} ({', '.join(f'{f}={getattr(spec, f)}' for f in differing)})"


def _draw(ax, curves: list[tuple[str, np.ndarray]], steps_per_task: int, num_tasks: int, log_y: bool) -> None:
    from matplotlib.ticker import MaxNLocator  # heavy: only the commands that draw pay for it

    x_tasks = np.arange(steps_per_task * num_tasks) / steps_per_task
    for label, curve in curves:
        ax.plot(x_tasks, curve, label=label, linewidth=1.2)
    for t in range(1, num_tasks):
        ax.axvline(t, color="0.85", linewidth=0.6, zorder=0)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlim(0, num_tasks)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"task ({steps_per_task} steps each)")
    ax.set_ylabel("learning rate")


def plot_schedules(
    specs: Sequence[ScheduleSpec],
    steps_per_task: int,
    num_tasks: int,
    path: str | Path,
    *,
    layout: str = "overlay",
    log_y: bool = False,
    title: str | None = None,
    dpi: int = 110,
) -> Path:
    """Draw the learning rate of each spec over the whole stream and write it to ``path``.

    Args:
        specs: the schedules to draw (at least one).
        steps_per_task: S.
        num_tasks: T.
        path: output file; the suffix picks the format (.png, .svg, .pdf). Written atomically.
        layout: ``"overlay"`` (one axis, one line per spec) or ``"grid"`` (one panel per spec).
        log_y: logarithmic learning-rate axis (shows the small late-task peaks of meta schedules).
        title: figure title; default names the stream's shape.
        dpi: raster resolution.

    Returns:
        The written path.

    Raises:
        ValueError: no specs, an unknown layout, or an invalid stream shape.
    """
    from matplotlib.figure import Figure  # local: only plotting needs matplotlib

    if not specs:
        raise ValueError("plot_schedules: give at least one schedule spec")
    if layout not in LAYOUTS:
        raise ValueError(f"layout: {layout!r} is not one of {', '.join(LAYOUTS)}")
    curves = [(_label(s, specs), stream_curve(s, steps_per_task, num_tasks)) for s in specs]
    title = title or f"learning rate over {num_tasks} tasks × {steps_per_task} steps"

    if layout == "overlay":
        fig = Figure(figsize=(9, 4.2), dpi=dpi, layout="constrained")
        ax = fig.subplots()
        _draw(ax, curves, steps_per_task, num_tasks, log_y)
        ax.legend(fontsize="small", loc="upper right")
    else:
        cols = min(3, len(curves))
        rows = -(-len(curves) // cols)
        fig = Figure(figsize=(4.2 * cols, 2.6 * rows), dpi=dpi, layout="constrained")
        axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)).ravel()
        for ax, curve in zip(axes, curves):
            _draw(ax, [curve], steps_per_task, num_tasks, log_y)
            ax.set_title(curve[0], fontsize="medium")
            ax.label_outer()
        for ax in axes[len(curves):]:
            ax.set_visible(False)
    fig.suptitle(title)
    return atomic_save_figure(fig, Path(path))
