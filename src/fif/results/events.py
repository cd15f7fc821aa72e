"""Run artifacts: atomic file writes, the JSONL event log, and the summary built from it.

``events.jsonl`` is the source of truth: one JSON object per line, appended and fsynced. Anything
else (``summary.json``, reports) can be rebuilt from it, also for an interrupted run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from fif.core.io import explained_write
from fif.eval.metrics import stream_point, trajectory_mean


class EventLog:
    """Append-only JSONL log (one event per line, flushed and fsynced per event)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, event: dict[str, Any]) -> None:
        """Append one event and fsync.

        Raises:
            StorageError: the disk is full or the folder read-only (a torn last line is dropped on resume).
        """
        line = json.dumps(event, sort_keys=False, allow_nan=False) + "\n"
        with explained_write(self.path, len(line)), open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """Events of a log; a torn last line (crash mid-write) is skipped.

    Raises:
        FileNotFoundError: no log at ``path``.
        ValueError: a line before the last is not a JSON object (garbage bytes, an edit), naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no event log at {path}; is this a fif run folder?")
    lines = path.read_bytes().splitlines()
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            event = json.loads(raw.decode("utf-8"))
            why = None if isinstance(event, dict) else f"a JSON {type(event).__name__}, not an event object"
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            why = str(e)
        if why is None:
            yield event
            continue
        if i == len(lines) - 1:  # a torn last line: the crash came mid-write
            return
        raise ValueError(
            f"{path}:{i + 1}: corrupt event line ({why}); the log was damaged or edited: restore it from a backup, "
            f"or cut it before that line (fif run --resume cuts it back to its checkpoint)"
        )


def summarize(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The run summary from its ``eval`` events (the last evaluation per task wins).

    Returns:
        ``{"trajectory": [{task, a_ka, a_zs, gm, scores, full}...], "final": {...}, "trajectory_mean": {...},
        "bad_samples": {...}, "budget": {...}}`` with scores in percent, and ``"guard"`` (:func:`guard_summary`)
        when steps were skipped or rolled back. ``task`` is -1 for the zero-shot point.
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
    if guard := guard_summary(events):
        summary["guard"] = guard
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


def guard_summary(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What the non-finite guard did: steps skipped per task (the kept attempt of each task) and rollbacks;
    None when it did nothing (so the summary of a clean run is unchanged)."""
    ends: dict[int, dict[str, Any]] = {}
    for e in events:
        if e.get("event") == "task_end":
            ends[int(e["task"])] = e  # after a rollback the task's last attempt is the kept one
    skipped = [int(ends[t].get("skipped_steps") or 0) for t in sorted(ends)]
    rollbacks = sum(1 for e in events if e.get("event") == "rollback")
    if not any(skipped) and not rollbacks:
        return None
    return {"skipped_steps": sum(skipped), "skipped_per_task": skipped, "rollbacks": rollbacks}
