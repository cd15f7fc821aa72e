"""The run state behind exact resume and rollback: what a run changes as it goes, what a checkpoint of a
run holds, and how a freshly set-up run is put back into it.

A checkpoint (see :mod:`fif.runner.checkpoint` for the format) holds the :class:`RunState` (budget
ledger, measured step costs, guard state, optimizer, unreadable images met), the loop log of the task in progress
(:class:`TaskRun`), the components' own state (the model's weights, the method's and the temporal
merger's ``state_dict``), every global RNG stream, and how far the event log had got (bytes + sha256).
Everything else is the run's :class:`~fif.runner.spec.RunSpec`, built again from the config on resume:
the mixture sampler needs no state (batches are a pure function of seed, task and step) and the buffer
is the finished tasks' data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from fif.budget import Ledger, StepCost
from fif.core.finite import all_finite, checked_tensors, optimizer_tensors
from fif.core.io import CheckpointError, atomic_write_json
from fif.core.seeding import capture_rng
from fif.data.bad_samples import BadSampleLog
from fif.methods import TaskInfo
from fif.results.events import read_events
from fif.runner.checkpoint import (
    CHECKPOINT_DIR,
    Checkpoint,
    Position,
    prune,
    save_checkpoint,
)
from fif.runner.sharding import SHARDS_DIR, publish_weights, write_shards
from fif.runner.spec import RunSpec
from fif.train.loop import TaskLog

log = logging.getLogger(__name__)


class _Rollback(Exception):
    """Raised out of a task to return to the newest valid checkpoint (the stream loop catches it).

    ``reason``: ``"steps"`` (``guard.max_bad_steps`` consecutive non-finite steps, or every step of a
    shorter task) or ``"weights"`` (non-finite weights, buffers or optimizer state).
    """

    def __init__(self, task: int, step: int, reason: str = "steps"):
        super().__init__(f"task {task} step {step}: {reason}")
        self.task, self.step, self.reason = task, step, reason


@dataclass
class GuardState:
    """What the non-finite guard changed so far (checkpointed: a resumed run keeps the reduced lr)."""

    lr_scale: float = 1.0
    rollbacks: int = 0


@dataclass
class RunState:
    """What a run changes as it goes, beside its components' own state; a checkpoint holds exactly this.

    Attributes:
        ledger: each task's budget, planned steps and spending.
        step_cost / reference_cost: the measured cost of the method's step and of plain fine-tuning's (the
            MAFs per step); a resumed run plans with the checkpoint's, not with costs measured again.
        guard: the learning-rate scale and rollbacks of the non-finite guard.
        optimizer: the current task's optimizer, or the last task's between tasks
            (``train.optimizer_reset=false`` carries its moments into the next).
        bad_samples: the unreadable images met so far, by source, and the cap ``data.max_bad_samples``.
        sharded: under ``train.distributed=fsdp``, the task's sharded copy of the model that ``optimizer``
            steps (None between tasks and in other runs); checkpointed as the run model's whole weights
            plus the optimizer's shards.
    """

    ledger: Ledger
    step_cost: StepCost
    reference_cost: StepCost
    guard: GuardState = field(default_factory=GuardState)
    optimizer: torch.optim.Optimizer | None = None
    bad_samples: BadSampleLog = field(default_factory=lambda: BadSampleLog(cap=0))
    sharded: torch.nn.Module | None = None  # train.distributed=fsdp: the task's sharded copy (fif.runner.sharding)


@dataclass
class TaskRun:
    """A task in progress: what the method sees of it and the loop's log (rebuilt from a checkpoint on resume)."""

    info: TaskInfo
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
    spec: RunSpec, state: RunState, position: Position, task_log: TaskLog | None = None
) -> Path | None:
    """Checkpoint everything the run needs to continue exactly from ``position``, then prune old ones.

    Mid-task (``position.started``, with the task's ``task_log``) that includes the task's optimizer; at a
    task boundary the optimizer only when ``train.optimizer_reset=false`` carries it into the next task.
    Only rank 0 writes the run folder (the other ranks return None).

    Returns:
        The checkpoint's folder (None on ranks other than 0).

    Raises:
        _Rollback: the weights or the optimizer state hold NaN/inf (nothing is written: a checkpoint is a
            rollback target and must never hold a diverged model).
    """
    keeps_optimizer = position.started or not spec.cfg.train.optimizer_reset
    optimizer = state.optimizer if keeps_optimizer else None
    publish_weights(spec, state.sharded)  # fsdp: the whole weights into the run's model (every rank)
    # every rank checks (the weights are the same on all), so all of them roll back together
    if not bool(all_finite([*checked_tensors(spec.clip.model.state_dict()), *optimizer_tensors(optimizer)])):  # sync
        raise _Rollback(position.task, position.step, "weights")
    shards = None
    if state.sharded is not None and optimizer is not None:  # every rank writes its shards of the optimizer
        shards = write_shards(spec, state.sharded, optimizer, position.name)
    if not spec.ranks.is_main:
        return None
    events = spec.events.path.read_bytes() if spec.events.path.is_file() else b""
    saved = {
        "ledger": state.ledger.to_dict(),
        "costs": {"step": state.step_cost.to_dict(), "reference": state.reference_cost.to_dict()},
        "method": spec.method.state_dict(),
        "merge": spec.merger.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None and shards is None else None,
        "task_log": task_log.state_dict() if task_log is not None else None,
        "guard": {"lr_scale": state.guard.lr_scale, "rollbacks": state.guard.rollbacks},
        "bad_samples": state.bad_samples.files,
        "events": {"bytes": len(events), "sha256": hashlib.sha256(events).hexdigest()},
        "rng": capture_rng(),
    }
    cfg = spec.cfg
    meta = {"seed": cfg.run.seed, "method": cfg.method.name, "arch": cfg.model.arch, "tasks": len(spec.tasks),
            "config": cfg.to_dict()}  # what resume trusts over a config.yaml edited since
    root = spec.out_dir / CHECKPOINT_DIR
    folders = {SHARDS_DIR: shards} if shards is not None else None
    path = save_checkpoint(root, position, spec.clip.model.state_dict(), saved, meta, folders)
    prune(root, cfg.checkpoint.keep_last)
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


