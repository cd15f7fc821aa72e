"""Reports over run folders: metrics tables, matplotlib plots and one self-contained HTML page.

``write_report([run_dir, ...], out_dir)`` loads each run (finished or interrupted) from its
``events.jsonl`` and writes ``report.html`` (plots embedded as base64 PNG), one PNG per plot and
``report.json`` (every metric).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from fif.core.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from fif.results.report import plots
from fif.results.report.data import RunData, TaskLedger, load_run, run_metrics
from fif.results.report.html import render_page

__all__ = ["RunData", "TaskLedger", "load_run", "run_metrics", "load_runs", "render_figures", "write_report", "Report"]


@dataclass
class Report:
    """What :func:`write_report` wrote."""

    html: Path
    json: Path
    pngs: list[Path]
    metrics: list[dict]


def load_runs(paths: Sequence[str | Path]) -> list[RunData]:
    """Load several run folders; labels are folder names, made unique with a suffix where they clash.

    Raises:
        ValueError: no paths.
        FileNotFoundError: a folder without ``events.jsonl`` (the message names it).
    """
    if not paths:
        raise ValueError("give at least one run folder")
    runs = [load_run(p) for p in paths]
    seen: dict[str, int] = {}
    for run in runs:
        n = seen.get(run.label, 0)
        seen[run.label] = n + 1
        if n:
            run.label = f"{run.label} ({n + 1})"
    return runs


def render_figures(runs: Sequence[RunData]) -> dict[str, tuple[bytes, str]]:
    """Every plot as PNG bytes with its caption, keyed by file stem."""

    figs: dict[str, tuple[bytes, str]] = {
        "trajectory": (
            plots.png_bytes(plots.plot_trajectories(runs)),
            "Zero-shot retention (A_ZS) against knowledge accumulation (A_KA) after every task; star = zero-shot "
            "start, square = last evaluation, dotted = iso-GM curves.",
        ),
        "metrics": (
            plots.png_bytes(plots.plot_metrics_over_tasks(runs)),
            "A_KA, A_ZS and GM after each task (filled = full test sets, hollow = FiF subsets).",
        ),
    }
    if any(r.losses for r in runs):
        figs["loss"] = (plots.png_bytes(plots.plot_losses(runs)), "Training loss across the stream.")
    for i, run in enumerate(runs):
        if run.matrix.tasks:
            figs[f"heatmap-{i}"] = (
                plots.png_bytes(plots.plot_change_heatmap(run)),
                f"{run.label}: score change from zero-shot per dataset (rows; KA = adaptation, ZS = eval-only) "
                "after each task (columns), in percentage points.",
            )
        if run.ledger:
            figs[f"budget-{i}"] = (
                plots.png_bytes(plots.plot_budget(run)),
                f"{run.label}: budget ledger, MAFs budgeted vs spent per task, and training vs evaluation time.",
            )
        if run.step_evals:
            figs[f"steps-{i}"] = (
                plots.png_bytes(plots.plot_step_evals(run)),
                f"{run.label}: evaluations every eval.every_steps steps inside each task (stability gap).",
            )
    return figs


def write_report(paths: Sequence[str | Path], out_dir: str | Path, title: str | None = None) -> Report:
    """Write ``report.html``, ``report.json`` and one PNG per plot into ``out_dir``.

    Args:
        paths: run folders (each with an ``events.jsonl``), finished or interrupted.
        out_dir: where to write (created if needed; existing report files are replaced).
        title: page title (default names the runs).

    Returns:
        A :class:`Report` with the written paths and each run's metrics.
    """

    runs = load_runs(paths)
    metrics = [run_metrics(r) for r in runs]
    figures = render_figures(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pngs = [atomic_write_bytes(out / f"{stem}.png", png) for stem, (png, _) in figures.items()]
    title = title or "fif report: " + ", ".join(r.label for r in runs)
    page = atomic_write_text(out / "report.html", render_page(runs, metrics, figures, title))
    js = atomic_write_json(out / "report.json", {"runs": metrics})
    return Report(page, js, pngs, metrics)
