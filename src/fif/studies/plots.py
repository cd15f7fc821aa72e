"""A study's figures (matplotlib, Agg): accumulation-vs-retention paths with their spread over seeds, the
Pareto front of each variant's grid, per-dataset change heat maps, and the paired differences with their
intervals. Each function returns a Figure; :func:`fif.results.report.plots.png_bytes` renders it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display: figures render to PNG bytes only

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from fif.eval.metrics import ScoreMatrix, change_from_zero_shot
from fif.results.report import RunData
from fif.results.report.plots import plot_change_heatmap
from fif.studies.analysis import ComparisonResult, PointSummary, StudyAnalysis


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def plot_paths(analysis: StudyAnalysis) -> Figure:
    """A_ZS against A_KA after every task, per variant at its chosen grid point: the mean over seeds, with
    ±1 sd across seeds as error bars (star = zero-shot, square = end)."""
    fig, ax = plt.subplots(figsize=(6.8, 5.4))
    for v, color in zip(analysis.variants, _colors(len(analysis.variants))):
        pts = [p for p in v.path if p["a_ka"] is not None and p["a_zs"] is not None]
        if not pts:
            continue
        xs, ys = [p["a_ka"] for p in pts], [p["a_zs"] for p in pts]
        xerr = [p["a_ka_sd"] or 0.0 for p in pts]
        yerr = [p["a_zs_sd"] or 0.0 for p in pts]
        n = int(pts[0]["n"] or 0)
        point = f"{v.chosen.label}; " if v.chosen and v.chosen.label != "-" else ""
        label = f"{v.variant} ({point}{n} seed{'s' if n != 1 else ''})"
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="-o", color=color, ms=4, lw=1.5, elinewidth=0.8,
                    capsize=2, alpha=0.9, label=label)
        ax.plot(xs[0], ys[0], marker="*", ms=15, color=color, mec="black", mew=0.7, ls="none")
        ax.plot(xs[-1], ys[-1], marker="s", ms=7, color=color, mec="black", mew=0.7, ls="none")
    ax.set_xlabel("knowledge accumulation A_KA (%)")
    ax.set_ylabel("zero-shot retention A_ZS (%)")
    ax.set_title("Accumulation vs retention, mean over seeds (bars: ±1 sd)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a study with no finished run has nothing to label
        ax.legend(fontsize=7, loc="best")
    return fig


def plot_fronts(analysis: StudyAnalysis) -> Figure:
    """Final A_ZS against final A_KA of every grid point (mean over seeds, bars: 95% intervals); each
    variant's Pareto front joined by a line, its compared point ringed in black."""
    fig, ax = plt.subplots(figsize=(6.8, 5.4))
    names = [v.variant for v in analysis.variants]
    for name, color in zip(names, _colors(len(names))):
        pts = [p for p in analysis.points if p.variant == name and p.mean("a_ka") is not None and p.mean("a_zs") is not None]
        if not pts:
            continue
        for p in pts:
            ka, zs = p.metrics["final"]["a_ka"], p.metrics["final"]["a_zs"]
            ax.errorbar(ka.mean, zs.mean, xerr=ka.half_width or 0.0, yerr=zs.half_width or 0.0, fmt="o", color=color,
                        ms=5, elinewidth=0.7, capsize=2, alpha=0.85)
            ax.annotate(p.label, (ka.mean, zs.mean), xytext=(3, 3), textcoords="offset points", fontsize=6, color=color)
            if p.chosen:
                ax.plot(ka.mean, zs.mean, "o", ms=11, mfc="none", mec="black", mew=1.2)
        front = sorted((p for p in pts if p.on_front), key=lambda p: p.mean("a_ka"))
        ax.plot([p.mean("a_ka") for p in front], [p.mean("a_zs") for p in front], "-", color=color, lw=1.4, label=name)
    ax.plot([], [], "o", ms=11, mfc="none", mec="black", label="compared point")
    ax.set_xlabel("final A_KA (%)")
    ax.set_ylabel("final A_ZS (%)")
    ax.set_title("Every grid point; lines = each variant's Pareto front")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return fig


def plot_final_changes(analysis: StudyAnalysis, matrices: dict[str, ScoreMatrix]) -> Figure:
    """Dataset × variant heat map of the final change from zero-shot (mean over seeds, percentage points)."""
    names = [v for v in matrices if len(matrices[v].tasks)]
    datasets: list[str] = []
    roles: dict[str, str] = {}
    for v in names:
        datasets += [d for d in matrices[v].datasets if d not in datasets]
        roles.update(matrices[v].roles)
    datasets.sort(key=lambda d: (roles.get(d) != "adaptation", d))
    grid = np.full((len(datasets), len(names)), np.nan)
    for j, v in enumerate(names):
        delta = change_from_zero_shot(matrices[v])[-1]
        for i, d in enumerate(datasets):
            if d in matrices[v].datasets:
                grid[i, j] = delta[matrices[v].datasets.index(d)]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(names) + 3.5), max(2.5, 0.32 * len(datasets) + 1.4)))
    finite = grid[np.isfinite(grid)]
    lim = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_yticks(range(len(datasets)),
                  labels=[f"{d} ({'KA' if roles.get(d) == 'adaptation' else 'ZS'})" for d in datasets], fontsize=8)
    ax.set_xticks(range(len(names)), labels=names, fontsize=8, rotation=30, ha="right")
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(j, i, f"{v:+.1f}", ha="center", va="center", fontsize=7,
                    color="white" if abs(v) > 0.6 * lim else "black")
    fig.colorbar(im, ax=ax, label="final − zero-shot (pp)", shrink=0.8)
    ax.set_title("Per-dataset change at the end, mean over seeds")
    fig.tight_layout()
    return fig


def plot_variant_heatmap(name: str, matrix: ScoreMatrix) -> Figure:
    """Dataset × evaluation change from zero-shot of one variant, mean over its seeds (the run report's plot)."""
    run = RunData(path=Path(name), label=f"{name} (mean over seeds)", events=[], config={}, info={}, matrix=matrix,
                  full=[])
    return plot_change_heatmap(run)


def plot_differences(results: Sequence[ComparisonResult]) -> Figure:
    """Every tested claim's paired difference with its 95% interval (a forest plot; 0 = no difference)."""
    rows = [r for r in results if r.difference is not None]
    fig, ax = plt.subplots(figsize=(8.0, max(1.8, 0.42 * len(rows) + 1.0)))
    for i, r in enumerate(rows):
        iv = r.difference.interval
        color = "tab:green" if r.verdict.startswith("reproduced") else "tab:red" if "opposite" in r.verdict else "0.4"
        lo = iv.low if iv.low is not None else iv.mean
        hi = iv.high if iv.high is not None else iv.mean
        ax.plot([lo, hi], [i, i], "-", color=color, lw=2)
        ax.plot(iv.mean, i, "o", color=color, ms=6)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), labels=[_short(r.comparison.claim) for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("paired difference (pp), mean and 95% t-interval over seeds")
    ax.set_title("Claims: green = reproduced, grey = no difference, red = opposite")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _short(text: str, width: int = 70) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def chosen_label(point: PointSummary | None) -> str:
    return "-" if point is None else point.label
