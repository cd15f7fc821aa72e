"""Picture of a stream: datasets × tasks, each cell the number of the dataset's concepts in the task.

Kept apart from :mod:`fif.data.stream` so building streams never imports matplotlib. Uses a bare
``Figure`` (Agg canvas): no pyplot, no global backend state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from fif.core.io import atomic_save_figure
from fif.data.stream import TaskSummary

CELL_LABEL_LIMIT = 40  # write the counts into the cells only while the grid is this small (per side)


def concept_matrix(summaries: Sequence[TaskSummary]) -> tuple[list[str], np.ndarray]:
    """Datasets (in order of first appearance) and the (datasets × tasks) matrix of concept counts."""
    datasets = list(dict.fromkeys(d for s in summaries for d in s.concepts))
    matrix = np.zeros((len(datasets), len(summaries)), dtype=np.int64)
    for t, s in enumerate(summaries):
        for d, n in s.concepts.items():
            matrix[datasets.index(d), t] = n
    return datasets, matrix


def plot_stream(summaries: Sequence[TaskSummary], path: str | Path, title: str = "", dpi: int = 110) -> Path:
    """Draw the datasets × tasks grid of concept counts and write it to ``path`` (atomically).

    Args:
        summaries: per-task summaries (:func:`fif.data.stream.describe_tasks`).
        path: output file; the suffix picks the format (.png, .svg, .pdf).
        title: figure title (default: the numbers of concepts, datasets and tasks).
        dpi: raster resolution.

    Returns:
        The written path.

    Raises:
        ValueError: no tasks (e.g. the zeroshot reference point has nothing to draw).
    """
    from matplotlib.figure import Figure  # local: only plotting needs matplotlib

    if not summaries:
        raise ValueError("plot_stream: the stream has no tasks (stream.reference=zeroshot?); nothing to draw")
    datasets, matrix = concept_matrix(summaries)
    num_tasks = len(summaries)
    fig = Figure(figsize=(min(3 + 0.45 * num_tasks, 24), min(1.5 + 0.32 * len(datasets), 30)), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    shown = np.ma.masked_equal(matrix, 0)
    image = ax.imshow(shown, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0)
    ax.set_facecolor("white")
    ax.set_yticks(range(len(datasets)), datasets, fontsize="small")
    step = max(1, num_tasks // 30)
    ax.set_xticks(range(0, num_tasks, step), [str(t + 1) for t in range(0, num_tasks, step)], fontsize="small")
    ax.set_xlabel("task")
    if max(matrix.shape) <= CELL_LABEL_LIMIT:
        top = matrix.max()
        for (i, t), n in np.ndenumerate(matrix):
            if n:
                ax.text(t, i, str(n), ha="center", va="center", fontsize="x-small",
                        color="black" if n > 0.6 * top else "white")
    from matplotlib.ticker import MaxNLocator  # heavy: only the commands that draw pay for it

    fig.colorbar(image, ax=ax, label="concepts in task", shrink=0.8, ticks=MaxNLocator(integer=True))
    total = int(matrix.sum())
    ax.set_title(title or f"{total} concepts of {len(datasets)} datasets in {num_tasks} tasks", fontsize="medium")
    return atomic_save_figure(fig, Path(path))
