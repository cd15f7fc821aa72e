"""A run folder as data: its events, config and provenance, and every metric derived from them.

Everything is rebuilt from ``events.jsonl`` (plus ``run.json`` for the task → dataset map, and
``config.yaml`` for labels), so a finished run and an interrupted one (no ``run_end``, no
``summary.json``) load the same way.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fif.data.specs import CONCEPT_SEP
from fif.eval.metrics import (
    ScoreMatrix,
    backward_transfer,
    change_from_zero_shot,
    forgetting,
    learned_tasks,
    mean_defined,
    stream_point,
    trajectory_mean,
)
from fif.results.events import read_events, summarize


@dataclass
class TaskLedger:
    """One task's budget line: planned vs spent MAFs, steps and seconds."""

    task: int
    steps: int | None = None
    budget_mafs: float | None = None
    spent_mafs: float | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    concepts: int | None = None


@dataclass
class RunData:
    """Everything the report needs about one run (see :func:`load_run`).

    Attributes:
        path: the run folder.
        label: short name for legends and tables (folder name unless given).
        events: every event of ``events.jsonl`` in order.
        config: the resolved config (``config.yaml``) as a dict, or {} if missing.
        info: ``run.json`` (provenance and the task concept lists), or {}.
        matrix: scores of every stream evaluation (row 0 = zero-shot when the run got that far).
        full: per matrix row, whether it was a full (not subset) evaluation.
        step_evals: in-task evaluations (``eval_step`` events; ``eval.every_steps``).
        ledger: per task budget line.
        losses: (global step, loss) of every ``train`` event.
        finished: True if the run logged ``run_end``.
        tasks_planned: number of tasks of the stream (from ``run_start``), or None.
    """

    path: Path
    label: str
    events: list[dict[str, Any]]
    config: dict[str, Any]
    info: dict[str, Any]
    matrix: ScoreMatrix
    full: list[bool]
    step_evals: list[dict[str, Any]] = field(default_factory=list)
    ledger: list[TaskLedger] = field(default_factory=list)
    losses: list[tuple[int, float]] = field(default_factory=list)
    finished: bool = False
    tasks_planned: int | None = None

    @property
    def method(self) -> str:
        start = next((e for e in self.events if e.get("event") == "run_start"), {})
        return str(start.get("method") or self.config.get("method", {}).get("name", "?"))

    @property
    def status(self) -> str:
        if self.finished:
            return "finished"
        done = sum(1 for t in self.ledger if t.spent_mafs is not None)
        return f"unfinished: {done}/{self.tasks_planned or '?'} tasks"  # interrupted, or still running

    def points(self) -> list[dict[str, float | None]]:
        """{task, a_ka, a_zs, gm} of each evaluation, in order."""
        return [
            {"task": t, **stream_point(_row(self.matrix, i), self.matrix.roles)} for i, t in enumerate(self.matrix.tasks)
        ]

    def task_datasets(self) -> list[list[str]]:
        """Per task, the datasets its concepts come from (from run.json; [] if unknown)."""
        return [
            sorted({c.split(CONCEPT_SEP, 1)[0] for c in concepts}) for concepts in self.info.get("tasks", [])
        ]


def _row(m: ScoreMatrix, i: int) -> dict[str, float]:
    return {d: float(v) for d, v in zip(m.datasets, m.scores[i]) if not np.isnan(v)}


def _read_optional(path: Path, parse) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return parse(path.read_text()) or {}
    except (ValueError, yaml.YAMLError):
        return {}


def load_run(path: str | Path, label: str | None = None) -> RunData:
    """Load a run folder (finished or interrupted).

    Raises:
        FileNotFoundError: no ``events.jsonl`` in ``path``.
        ValueError: the log is corrupt before its last line.
    """
    path = Path(path)
    events = list(read_events(path / "events.jsonl"))
    check_scores(events, path / "events.jsonl")
    config = _read_optional(path / "config.yaml", yaml.safe_load)
    info = _read_optional(path / "run.json", json.loads)
    summary = summarize(events)
    roles: dict[str, str] = {}
    for e in events:
        if e.get("event") in ("eval", "eval_step"):
            roles.update(e.get("roles", {}))
    rows = [(p["task"], p["scores"]) for p in summary["trajectory"]]
    matrix = ScoreMatrix.from_rows(rows, roles)
    start = next((e for e in events if e.get("event") == "run_start"), {})
    return RunData(
        path=path,
        label=label or path.resolve().name,
        events=events,
        config=config,
        info=info,
        matrix=matrix,
        full=[bool(p.get("full")) for p in summary["trajectory"]],
        step_evals=[e for e in events if e.get("event") == "eval_step"],
        ledger=_ledger(events),
        losses=_losses(events),
        finished=any(e.get("event") == "run_end" for e in events),
        tasks_planned=start.get("tasks"),
    )


def check_scores(events: list[dict[str, Any]], where: Path) -> None:
    """Every evaluation event has a mapping of dataset → finite number (fif never writes anything else).

    Raises:
        ValueError: naming the log, the event and the dataset whose score is null or not a number.
    """
    for i, e in enumerate(events):
        if e.get("event") not in ("eval", "eval_step"):
            continue
        scores, roles = e.get("scores"), e.get("roles")
        bad = None
        if not isinstance(scores, dict) or not isinstance(roles, dict):
            bad = "no scores/roles mapping"
        else:
            for dataset, v in scores.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    bad = f"score {v!r} for {dataset!r} is not a number"
                    break
        if bad:
            raise ValueError(
                f"{where}: event {i + 1} ({e.get('event')} of task {e.get('task')}): {bad}; the log was damaged or "
                f"edited: restore it, or remove that event to report the rest"
            )


def _ledger(events: list[dict[str, Any]]) -> list[TaskLedger]:
    tasks: dict[int, TaskLedger] = {}
    for e in events:
        kind, t = e.get("event"), e.get("task")
        if t is None or kind not in ("task_start", "task_end", "eval"):
            continue
        t = int(t)
        if t < 0:
            continue
        line = tasks.setdefault(t, TaskLedger(t))
        if kind == "task_start":
            line.steps, line.concepts = e.get("steps"), e.get("concepts")
        elif kind == "task_end":
            line.steps = e.get("steps", line.steps)
            line.budget_mafs, line.spent_mafs = e.get("budget_mafs"), e.get("spent_mafs")
            line.train_seconds = e.get("train_seconds")
        else:
            line.eval_seconds = e.get("seconds")
    return [tasks[t] for t in sorted(tasks)]


def _losses(events: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(global step, loss): steps of earlier tasks are added so the curve runs across the stream."""
    offset = 0
    steps_of: dict[int, int] = {}
    out = []
    for e in events:
        kind = e.get("event")
        if kind == "task_start":
            steps_of[int(e["task"])] = offset
        elif kind == "task_end":
            offset = steps_of.get(int(e["task"]), offset) + int(e.get("steps") or 0)
        elif kind == "train" and e.get("loss") is not None:
            out.append((steps_of.get(int(e["task"]), offset) + int(e["step"]), float(e["loss"])))
    return out


def run_metrics(run: RunData) -> dict[str, Any]:
    """Final and trajectory-mean A_KA / A_ZS / GM, and per-dataset Δ vs zero-shot, forgetting, BWT.

    Forgetting is measured from the first task that trained on a dataset, backward transfer from the
    last one (see :func:`fif.eval.metrics.forgetting` and :func:`fif.eval.metrics.backward_transfer`). Without a
    task → dataset map (no ``run.json``) both are measured from the first task.
    """
    points = run.points()
    m = run.matrix
    adaptation = [d for d in m.datasets if m.roles.get(d) == "adaptation"]
    spans = learned_tasks(run.task_datasets())
    first = {d: spans[d][0] if d in spans else 0 for d in adaptation}
    last = {d: spans[d][1] if d in spans else 0 for d in adaptation}
    forget = forgetting(m, first)
    bwt = backward_transfer(m, last)
    delta = change_from_zero_shot(m)
    final_delta = {d: (None if np.isnan(v) else float(v)) for d, v in zip(m.datasets, delta[-1])} if len(points) else {}
    return {
        "label": run.label,
        "method": run.method,
        "status": run.status,
        "evaluations": len(points),
        "zero_shot": {k: points[0][k] for k in ("a_ka", "a_zs", "gm")} if points else {},
        "final": {k: points[-1][k] for k in ("task", "a_ka", "a_zs", "gm")} if points else {},
        "trajectory_mean": trajectory_mean(points),
        "trajectory": points,
        "change_from_zero_shot": final_delta,
        "forgetting": forget,
        "backward_transfer": bwt,
        "mean_forgetting": mean_defined(forget),
        "mean_backward_transfer": mean_defined(bwt),
        "budget": {
            "total_mafs": next((e.get("budget_total_mafs") for e in run.events if e.get("event") == "run_start"), None),
            "spent_mafs": sum(t.spent_mafs or 0.0 for t in run.ledger),
            "train_seconds": sum(t.train_seconds or 0.0 for t in run.ledger),
            "eval_seconds": sum(e.get("seconds", 0.0) for e in run.events if e.get("event") in ("eval", "eval_step")),
        },
    }
