"""The report's figures (matplotlib, Agg backend): each function takes loaded runs, returns a Figure.

Figures never touch the screen or the disk; :func:`png_bytes` renders one for the HTML page and the
PNG files.
"""

from __future__ import annotations

import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display: the report renders to PNG bytes only

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fif.eval.metrics import (
    change_from_zero_shot,  # noqa: E402
    stream_point,
)
from fif.results.report.data import RunData  # noqa: E402

DPI = 100


def png_bytes(fig: Figure) -> bytes:
    """Render ``fig`` to PNG and close it (frees its memory)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _task_label(task: int) -> str:
    return "zs" if task < 0 else str(task + 1)


def plot_trajectories(runs: Sequence[RunData]) -> Figure:
    """FiF's main plot: retention A_ZS against accumulation A_KA, one path per run from its zero-shot point.

    Faint dashed curves are iso-GM lines (A_ZS = GM² / A_KA).
    """
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    xs_all, ys_all = [], []
    for run, color in zip(runs, _colors(len(runs))):
        pts = [p for p in run.points() if p["a_ka"] is not None and p["a_zs"] is not None]
        if not pts:
            continue
        xs, ys = [p["a_ka"] for p in pts], [p["a_zs"] for p in pts]
        xs_all += xs
        ys_all += ys
        ax.plot(xs, ys, "-o", color=color, ms=4, lw=1.5, label=f"{run.label} ({run.method})")
        if pts[0]["task"] < 0:
            ax.plot(xs[0], ys[0], marker="*", ms=16, color=color, mec="black", mew=0.8, ls="none")
        ax.plot(xs[-1], ys[-1], marker="s", ms=7, color=color, mec="black", mew=0.8, ls="none")
        for p, x, y in zip(pts, xs, ys):
            ax.annotate(_task_label(p["task"]), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7, color=color)
    if xs_all:
        x0, x1 = min(xs_all), max(xs_all)
        y0, y1 = min(ys_all), max(ys_all)
        pad_x, pad_y = max(1.0, 0.08 * (x1 - x0)), max(1.0, 0.08 * (y1 - y0))
        ax.set_xlim(x0 - pad_x, x1 + pad_x)
        ax.set_ylim(y0 - pad_y, y1 + pad_y)
        grid_x = np.linspace(max(x0 - pad_x, 1e-3), x1 + pad_x, 200)
        gms = [np.sqrt(x * y) for x, y in zip(xs_all, ys_all)]
        for g in np.linspace(min(gms), max(gms), 4) if len(gms) > 1 else gms:
            ax.plot(grid_x, g * g / grid_x, ls=":", lw=0.8, color="0.6", zorder=0)
            ax.annotate(f"GM {g:.1f}", (grid_x[-1], g * g / grid_x[-1]), fontsize=7, color="0.45", ha="right", va="bottom", annotation_clip=True)
        ax.set_xlim(x0 - pad_x, x1 + pad_x)
        ax.set_ylim(y0 - pad_y, y1 + pad_y)
    ax.plot([], [], marker="*", ms=12, color="0.5", mec="black", ls="none", label="zero-shot start")
    ax.plot([], [], marker="s", ms=7, color="0.5", mec="black", ls="none", label="last evaluation")
    ax.set_xlabel("knowledge accumulation A_KA (%)")
    ax.set_ylabel("zero-shot retention A_ZS (%)")
    ax.set_title("Accumulation vs retention (numbers = task)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def plot_metrics_over_tasks(runs: Sequence[RunData]) -> Figure:
    """A_KA, A_ZS and GM after each task (0 = zero-shot); hollow markers = subset evaluations."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharex=True)
    for run, color in zip(runs, _colors(len(runs))):
        pts = run.points()
        for ax, key in zip(axes, ("a_ka", "a_zs", "gm")):
            xs = [p["task"] + 1 for p in pts if p[key] is not None]
            ys = [p[key] for p in pts if p[key] is not None]
            full = [f for p, f in zip(pts, run.full) if p[key] is not None]
            ax.plot(xs, ys, "-", color=color, lw=1.5, label=run.label)
            ax.scatter([x for x, f in zip(xs, full) if f], [y for y, f in zip(ys, full) if f], color=color, s=22, zorder=3)
            ax.scatter(
                [x for x, f in zip(xs, full) if not f], [y for y, f in zip(ys, full) if not f],
                facecolors="white", edgecolors=color, s=22, zorder=3,
            )
    for ax, title in zip(axes, ("A_KA (adaptation)", "A_ZS (eval-only)", "GM")):
        ax.set_title(title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("tasks done (0 = zero-shot)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score (%)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_change_heatmap(run: RunData) -> Figure:
    """Dataset × evaluation heat map of the score change from zero-shot (percentage points)."""
    m = run.matrix
    order = [d for d in m.datasets if m.roles.get(d) == "adaptation"] + [
        d for d in m.datasets if m.roles.get(d) != "adaptation"
    ]
    cols = [m.datasets.index(d) for d in order]
    delta = change_from_zero_shot(m)[:, cols].T  # (datasets, evaluations)
    height = max(2.5, 0.32 * len(order) + 1.2)
    width = max(5.0, 0.55 * len(m.tasks) + 3.5)
    fig, ax = plt.subplots(figsize=(width, height))
    finite = delta[np.isfinite(delta)]
    lim = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    im = ax.imshow(np.ma.masked_invalid(delta), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_yticks(range(len(order)), labels=[f"{d} ({'KA' if m.roles.get(d) == 'adaptation' else 'ZS'})" for d in order], fontsize=8)
    ax.set_xticks(range(len(m.tasks)), labels=[_task_label(t) for t in m.tasks], fontsize=8)
    ax.set_xlabel("after task")
    n_adapt = sum(1 for d in order if m.roles.get(d) == "adaptation")
    if 0 < n_adapt < len(order):
        ax.axhline(n_adapt - 0.5, color="black", lw=1.2)
    if delta.size <= 400:
        for (i, j), v in np.ndenumerate(delta):
            if np.isfinite(v):
                r = int(round(v))
                ax.text(j, i, "0" if r == 0 else f"{r:+d}", ha="center", va="center", fontsize=7,
                        color="white" if abs(v) > 0.6 * lim else "black")
    fig.colorbar(im, ax=ax, label="change vs zero-shot (pp)", shrink=0.8)
    ax.set_title(f"{run.label}: per-dataset change from zero-shot")
    fig.tight_layout()
    return fig


def plot_budget(run: RunData) -> Figure:
    """Per task: MAFs budgeted vs spent, and seconds spent training vs evaluating."""
    lines = run.ledger
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
    x = np.arange(len(lines))
    w = 0.4
    ax1.bar(x - w / 2, [t.budget_mafs or 0.0 for t in lines], w, label="budget", color="0.7")
    ax1.bar(x + w / 2, [t.spent_mafs or 0.0 for t in lines], w, label="spent", color="tab:blue")
    for xi, t in zip(x, lines):
        if t.budget_mafs and t.spent_mafs is not None:
            ax1.annotate(f"{t.spent_mafs / t.budget_mafs:.0%}", (xi + w / 2, t.spent_mafs), ha="center", va="bottom", fontsize=7)
    ax1.set_ylabel("MAFs")
    ax1.set_title("Compute budget per task")
    ax2.bar(x - w / 2, [t.train_seconds or 0.0 for t in lines], w, label="train", color="tab:orange")
    ax2.bar(x + w / 2, [t.eval_seconds or 0.0 for t in lines], w, label="evaluation", color="tab:green")
    ax2.set_ylabel("seconds")
    ax2.set_title("Wall time per task")
    for ax in (ax1, ax2):
        ax.set_xticks(x, labels=[str(t.task + 1) for t in lines])
        ax.set_xlabel("task")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_step_evals(run: RunData) -> Figure:
    """In-task evaluations (``eval.every_steps``): A_KA and A_ZS against the global step (stability gap)."""

    offsets, offset = {}, 0
    for t in run.ledger:
        offsets[t.task] = offset
        offset += t.steps or 0
    rows = []
    for e in run.step_evals:
        p = stream_point(e["scores"], e["roles"])
        rows.append((offsets.get(int(e["task"]), 0) + int(e["step"]), p))
    steps_of = {t.task: t.steps or 0 for t in run.ledger}
    for p in run.points():  # end-of-task evaluations sit at the task's last step
        task = p["task"]
        rows.append((0 if task < 0 else offsets.get(task, offset) + steps_of.get(task, 0), p))
    rows.sort(key=lambda r: r[0])
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for key, color in (("a_ka", "tab:blue"), ("a_zs", "tab:red")):
        xs = [s for s, p in rows if p[key] is not None]
        ys = [p[key] for s, p in rows if p[key] is not None]
        ax.plot(xs, ys, "-o", ms=3, color=color, label={"a_ka": "A_KA", "a_zs": "A_ZS"}[key])
    for t in run.ledger[1:]:
        ax.axvline(offsets[t.task], color="0.7", lw=0.8, ls="--")
    ax.set_xlabel("optimizer step (whole stream; dashed = task boundary)")
    ax.set_ylabel("score (%)")
    ax.set_title(f"{run.label}: evaluations inside tasks (stability gap)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_losses(runs: Sequence[RunData]) -> Figure:
    """Training loss (mean per logging interval) against the global step."""
    fig, ax = plt.subplots(figsize=(9, 3.4))
    for run, color in zip(runs, _colors(len(runs))):
        if run.losses:
            xs, ys = zip(*run.losses)
            ax.plot(xs, ys, color=color, lw=1.2, label=run.label)
    ax.set_xlabel("optimizer step (whole stream)")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    if any(r.losses for r in runs):
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
