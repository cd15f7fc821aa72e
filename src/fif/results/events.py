"""Run artifacts: atomic file writes, the JSONL event log, and the summary built from it.

``events.jsonl`` is the source of truth: one JSON object per line, appended and fsynced. Anything
else (``summary.json``, reports) can be rebuilt from it, also for an interrupted run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from fif.eval.metrics import stream_point, trajectory_mean


class EventLog:
    """Append-only JSONL log (one event per line, flushed and fsynced per event)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, sort_keys=False, allow_nan=False) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """Events of a log; a torn last line (crash mid-write) is skipped, a torn middle line is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no event log at {path}; is this a fif run folder?")
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                return
            raise ValueError(f"{path}:{i + 1}: corrupt event line ({e})") from e


def summarize(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The run summary from its ``eval`` events (the last evaluation per task wins).

    Returns:
        ``{"trajectory": [{task, a_ka, a_zs, gm, scores, full}...], "final": {...}, "trajectory_mean": {...},
        "bad_samples": {...}, "budget": {...}}`` with scores in percent. ``task`` is -1 for the zero-shot point.
    """
    by_task: dict[int, dict[str, Any]] = {}
    for e in events:
        if e.get("event") == "eval":
            by_task[int(e["task"])] = e
    trajectory = []
    for task in sorted(by_task):
        e = by_task[task]
        point = stream_point(e["scores"], e["roles"])
        trajectory.append({"task": task, **point, "full": e.get("full", False), "scores": e["scores"]})
    final = {k: trajectory[-1][k] for k in ("task", "a_ka", "a_zs", "gm")} if trajectory else {}
    summary: dict[str, Any] = {"trajectory": trajectory, "final": final, "trajectory_mean": trajectory_mean(trajectory)}
    summary["bad_samples"] = bad_samples(events)
    tasks = [e for e in events if e.get("event") == "task_end"]
    if tasks:
        summary["budget"] = {
            "total_mafs": tasks[-1].get("budget_total_mafs"),
            "spent_mafs": sum(e.get("spent_mafs", 0.0) for e in tasks),
            "steps": [e.get("steps") for e in tasks],
        }
    return summary


def bad_samples(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The unreadable images a run skipped (its ``bad_samples`` events): ``{"total": n, "by_source":
    {source: n}, "files": {source: [file, ...]}}``."""
    files: dict[str, list[str]] = {}
    for e in events:
        if e.get("event") == "bad_samples":
            for source, found in e.get("files", {}).items():
                known = files.setdefault(source, [])
                known.extend(f for f in found if f not in known)
    return {"total": sum(len(f) for f in files.values()), "by_source": {s: len(f) for s, f in files.items()},
            "files": files}
