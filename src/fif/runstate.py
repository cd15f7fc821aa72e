"""The run state behind exact resume and rollback: what a checkpoint of a run holds and how a freshly
set-up run is put back into it.

A checkpoint (see :mod:`fif.checkpoint` for the format) holds the model weights, the method's state, the
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

from fif.budget import Ledger, StepCost
from fif.checkpoint import (
    CHECKPOINT_DIR,
    Checkpoint,
    CheckpointError,
    Position,
    capture_rng,
    latest_valid,
    prune,
    remove_after,
    restore_rng,
    save_checkpoint,
)
from fif.methods import TaskInfo, freeze_all_but
from fif.resume import TrainingDivergedError
from fif.results import atomic_write_json, read_events
from fif.train import STAT_RUN, TaskLog

if TYPE_CHECKING:
    from fif.run_setup import RunContext

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


def restore_run_state(ctx: RunContext, ckpt: Checkpoint, rollback: bool) -> TaskRun | None:
    """Put a freshly set-up run into the state of ``ckpt``; returns the task in progress, if any.

    On resume (``rollback=False``) the event log is cut back to the checkpoint and the guard state
    restored; a rollback keeps both (the log records the rollback, the lr stays reduced).
    """
    state, pos = ckpt.state, ckpt.position
    if pos.task > len(ctx.tasks) or len(state["ledger"]["tasks"]) != max(len(ctx.tasks), 1):
        raise CheckpointError(
            f"{ckpt.path}: made for a run of {len(state['ledger']['tasks'])} tasks, this config has {len(ctx.tasks)}"
        )
    ctx.method.load_state_dict(state["method"])  # first: a method may rebuild modules (adapters) here
    if "merge" in state:  # checkpoints from before temporal merging have none (and merged nothing)
        ctx.merger.load_state_dict(state["merge"])
    try:
        ctx.clip.model.load_state_dict(ckpt.weights)
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt.path}: the weights do not fit model {ctx.cfg.model.arch!r} ({e})") from e
    freeze_all_but(ctx.clip.model, ctx.method.trainable_parameters())
    ctx.ledger = Ledger.from_dict(state["ledger"])
    ctx.step_cost = StepCost.from_dict(state["costs"]["step"])
    ctx.reference_cost = StepCost.from_dict(state["costs"]["reference"])
    from fif.run_task import task_info, task_optimizer, task_pool  # the runner's own builders, so both paths agree

    ctx.buffer_segments = [seg for t in ctx.tasks[: pos.task] for seg in task_pool(ctx, t).segments]
    if not rollback:
        ctx.guard = GuardState(**state["guard"])
        main = ctx.dist is None or ctx.dist.is_main  # only rank 0 writes the run folder
        dropped = truncate_events(ctx.events.path, state["events"]["bytes"], state["events"]["sha256"]) if main else 0
        log.info(f"resuming from {ckpt.path.name}; dropped {dropped} events logged after it")
    current = None
    ctx.optimizer = None
    if pos.started:
        task = ctx.tasks[pos.task]
        info = task_info(ctx, task, steps=ctx.ledger.tasks[pos.task].steps)
        task_log = TaskLog.from_state_dict(state["task_log"])
        if rollback:  # a fresh start for the non-finite counters
            task_log.stats[STAT_RUN:] = 0
        current = TaskRun(info, task_optimizer(ctx, state["optimizer"]), task_log)
    elif state["optimizer"] is not None:  # carried into the next task (train.optimizer_reset=false)
        task_optimizer(ctx, state["optimizer"])
    restore_rng(state["rng"])  # last: nothing after it may draw
    return current


def roll_back(ctx: RunContext, task: int, step: int) -> tuple[Position, TaskRun | None]:
    """Return to the newest valid checkpoint with the learning rate scaled by ``guard.lr_factor``.

    Raises:
        TrainingDivergedError: ``guard.max_rollbacks`` are used up, or no checkpoint verifies.
    """
    g = ctx.cfg.guard
    what = f"task {task}: {g.max_bad_steps} consecutive non-finite steps (loss or gradient) by step {step}"
    if ctx.guard.rollbacks >= g.max_rollbacks:
        raise TrainingDivergedError(
            f"{what}, after {ctx.guard.rollbacks} rollbacks (lr x{ctx.guard.lr_scale:g}). Lower train.lr, check the "
            f"task's data, or raise guard.max_rollbacks; continue with: fif run --resume {ctx.out_dir} train.lr=..."
        )
    ckpt, _ = latest_valid(ctx.out_dir / CHECKPOINT_DIR)
    if ckpt is None:
        raise TrainingDivergedError(f"{what}, and no checkpoint verifies to roll back to")
    ctx.guard.rollbacks += 1
    ctx.guard.lr_scale *= g.lr_factor
    if ctx.dist is not None:  # every rank has read the checkpoint before rank 0 removes the newer ones
        ctx.dist.barrier()
    if ctx.dist is None or ctx.dist.is_main:
        remove_after(ctx.out_dir / CHECKPOINT_DIR, ckpt.position)
    current = restore_run_state(ctx, ckpt, rollback=True)
    ctx.emit({
        "event": "rollback", "task": task, "step": step, "to_task": ckpt.position.task,
        "to_step": ckpt.position.step, "lr_scale": ctx.guard.lr_scale, "rollbacks": ctx.guard.rollbacks,
    })
    log.warning(f"{what}; rolled back to {ckpt.path.name} with lr x{ctx.guard.lr_scale:g}")
    return ckpt.position, current
