"""The run state behind exact resume and rollback: what a checkpoint of a run holds and how a freshly
set-up run is put back into it.

A checkpoint (see :mod:`fif.runner.checkpoint` for the format) holds the model weights, the method's state, the
optimizer and loop log of the task in progress, the budget ledger and measured step costs, the guard
state, every global RNG stream, and how far the event log had got (bytes + sha256). The mixture
sampler needs no state (batches are a pure function of seed, task and step) and the buffer is rebuilt
from the finished tasks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fif.core.io import CheckpointError, atomic_write_json
from fif.core.seeding import capture_rng
from fif.methods import TaskInfo
from fif.results.events import read_events
from fif.runner.checkpoint import (
    CHECKPOINT_DIR,
    Checkpoint,
    Position,
    prune,
    save_checkpoint,
)
from fif.train.loop import TaskLog

if TYPE_CHECKING:
    from fif.runner.setup import RunContext

log = logging.getLogger(__name__)


@dataclass
class GuardState:
    """What the non-finite guard changed so far (checkpointed: a resumed run keeps the reduced lr)."""

    lr_scale: float = 1.0
    rollbacks: int = 0


@dataclass
class TaskRun:
    """A task in progress: its info, optimizer and loop log (rebuilt from a checkpoint on resume)."""

    info: TaskInfo
    optimizer: torch.optim.Optimizer
    log: TaskLog


def is_finished(run_dir: Path) -> bool:
    """The run wrote its summary and its last event is ``run_end``."""
    if not (run_dir / "summary.json").is_file() or not (run_dir / "events.jsonl").is_file():
        return False
    events = list(read_events(run_dir / "events.jsonl"))
    return bool(events) and events[-1].get("event") == "run_end"


def record_resume(run_dir: Path, ckpt: Checkpoint | None, changed: dict[str, tuple[Any, Any]]) -> None:
    """Append this resume (when, from which checkpoint, which config changes) to run.json."""
    path = run_dir / "run.json"
    info = json.loads(path.read_text()) if path.is_file() else {}
    info.setdefault("resumes", []).append({
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": ckpt.path.name if ckpt is not None else None,
        "config_changes": {k: {"was": old, "now": new} for k, (old, new) in changed.items()},
    })
    atomic_write_json(path, info)


def save_run_checkpoint(
    ctx: RunContext, position: Position, log_: TaskLog | None = None, optimizer: torch.optim.Optimizer | None = None
) -> Path | None:
    """Checkpoint everything the run needs to continue exactly from ``position``, then prune old ones.

    Mid-task (``position.started``) that is the task's optimizer and loop log; at a task boundary the
    optimizer only when ``train.optimizer_reset=false`` carries it into the next task. In a data-parallel
    run only rank 0 writes (the others return None).
    """
    if ctx.dist is not None and not ctx.dist.is_main:
        return None
    if optimizer is None and not position.started and not ctx.cfg.train.optimizer_reset:
        optimizer = ctx.optimizer
    events = ctx.events.path.read_bytes() if ctx.events.path.is_file() else b""
    state = {
        "ledger": ctx.ledger.to_dict(),
        "costs": {"step": ctx.step_cost.to_dict(), "reference": ctx.reference_cost.to_dict()},
        "method": ctx.method.state_dict(),
        "merge": ctx.merger.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "task_log": log_.state_dict() if log_ is not None else None,
        "guard": {"lr_scale": ctx.guard.lr_scale, "rollbacks": ctx.guard.rollbacks},
        "events": {"bytes": len(events), "sha256": hashlib.sha256(events).hexdigest()},
        "rng": capture_rng(),
    }
    meta = {"seed": ctx.cfg.run.seed, "method": ctx.cfg.method.name, "arch": ctx.cfg.model.arch, "tasks": len(ctx.tasks)}
    root = ctx.out_dir / CHECKPOINT_DIR
    path = save_checkpoint(root, position, ctx.clip.model.state_dict(), state, meta)
    prune(root, ctx.cfg.checkpoint.keep_last)
    log.debug(f"checkpoint {path}")
    return path


def truncate_events(path: Path, nbytes: int, sha256: str) -> int:
    """Cut the event log back to what it held at a checkpoint; returns how many events were dropped.

    Raises:
        CheckpointError: the log's first ``nbytes`` are not what the checkpoint saw.
    """
    data = path.read_bytes() if path.is_file() else b""
    if len(data) < nbytes or hashlib.sha256(data[:nbytes]).hexdigest() != sha256:
        raise CheckpointError(
            f"{path} does not start with the {nbytes} bytes the checkpoint recorded (edited or truncated?); "
            f"restore the file or start a new run"
        )
    dropped = data[nbytes:].count(b"\n")
    with open(path, "r+b" if path.is_file() else "wb") as f:
        f.truncate(nbytes)
        f.flush()
        os.fsync(f.fileno())
    return dropped


