"""The stream loop: for each task, begin_task → train → end_task → evaluate → record.

:func:`run` is the library entry point behind ``fif run``. It reads a validated :class:`Config`,
writes a run folder (config.yaml, run.json, events.jsonl, summary.json, final.safetensors) and returns
a :class:`RunResult`. It never prints: progress goes through ``on_event`` and tqdm bars.

Run setup (:func:`setup`, :class:`RunContext`, the run folder) lives in :mod:`fif.runner.setup` and each
task's work (:func:`run_task` and its builders) in :mod:`fif.runner.task`; both are re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from fif.budget import mafs_per_step
from fif.config import Config, dump_yaml
from fif.core.io import atomic_write_bytes, atomic_write_json, atomic_write_text, safetensors_bytes
from fif.core.version import __version__
from fif.model.clip import Clip
from fif.results.events import read_events, summarize
from fif.results.sinks import FanOut, build_sinks
from fif.runner.checkpoint import CHECKPOINT_DIR, Position, latest_valid, load_checkpoint, quarantine
from fif.runner.distributed import attach, dist_provenance, join
from fif.runner.folder import RunLock, StopSignals, resume_config
from fif.runner.setup import RunContext, RunFolderError, default_out_dir, prepare_out_dir, setup
from fif.runner.state import TaskRun, is_finished, record_resume, save_run_checkpoint, truncate_events
from fif.runner.task import (  # noqa: F401  (re-exported, as above)
    StepEvals,
    _Rollback,
    batch_iterator,
    deployed_weights,
    eval_precision,
    evaluate_deployed,
    evaluate_in_task,
    finite_or_none,
    latest_weights,
    restore_run_state,
    roll_back,
    run_task,
    start_task,
    task_batches,
    task_info,
    task_optimizer,
    task_pool,
)

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a finished run returns: its folder, summary and (optionally) the deployed model."""

    out_dir: Path
    summary: dict[str, Any]
    clip: Clip | None = None

    @property
    def final(self) -> dict[str, Any]:
        return self.summary["final"]


def provenance(cfg: Config) -> dict[str, Any]:
    import open_clip  # heavy: every fif command would pay for it at start

    return {
        "fif_version": __version__,
        "torch_version": torch.__version__,
        "open_clip_version": getattr(open_clip, "__version__", "?"),
        "python": platform.python_version(),
        "seed": cfg.run.seed,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run(
    cfg: Config,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    on_event: Callable[[dict], None] | None = None,
    progress: bool = False,
) -> RunResult:
    """Run a whole continual-pretraining stream.

    Args:
        cfg: a validated config (see :func:`fif.config.load_config`).
        out_dir: run folder (default ``cfg.run.out`` or a new folder under ``runs/``).
        overwrite: replace an existing run folder.
        on_event: called with every event as it is logged (the CLI prints the per-task table from it).
        progress: show tqdm progress bars.

    Returns:
        A :class:`RunResult` with the run folder, the summary and the deployed model.

    Raises:
        RunFolderError: the folder exists and ``overwrite`` is False.
        RunFolderInUseError: another fif process works in the folder.
        ConfigError / ValueError / KeyError: bad configuration or data, before any result is written.
        RunInterrupted: SIGINT/SIGTERM; the folder can be resumed with :func:`resume`.
        TrainingDivergedError: non-finite steps persisted after ``guard.max_rollbacks`` rollbacks.
    """
    ranks = join(cfg.train.distributed, cfg.run.device, cfg.train.dist_timeout_minutes, cfg.train.batch_size)
    main = ranks.is_main
    out = Path(ranks.broadcast(str(out_dir or cfg.run.out or default_out_dir(cfg))))  # rank 0's clock names it
    with StopSignals(out) as stop:
        lock = ranks.on_main(lambda: prepare_out_dir(out, overwrite))
        try:
            try:
                with ranks.main_first():  # the other ranks find what rank 0 cached (base model, data)
                    ctx = setup(cfg, out, on_event if main else None, progress and main)
                attach(ctx, ranks)
                if main:
                    open_sinks(ctx)
            except BaseException:
                if main:  # nothing was learned yet: leave no half-made run folder behind
                    shutil.rmtree(out, ignore_errors=True)
                raise
            ctx.stop = stop
            if main:
                atomic_write_text(out / "config.yaml", dump_yaml(cfg))
                atomic_write_json(out / "run.json", {
                    **provenance(cfg), **dist_provenance(ranks), "tasks": [list(t.concepts) for t in ctx.tasks],
                })
            return start_stream(ctx)
        finally:
            if lock is not None:
                lock.release()


def resume(
    run_dir: str | Path,
    overrides: list[str] | None = None,
    on_event: Callable[[dict], None] | None = None,
    progress: bool = False,
) -> RunResult:
    """Continue an interrupted run from its newest valid checkpoint; on CPU the result is bit-identical
    to the uninterrupted run (``summary.json``, ``final.safetensors``, and ``events.jsonl`` up to the
    wall-clock fields of :data:`fif.runner.folder.TIMING_KEYS`).

    Args:
        run_dir: the run folder.
        overrides: ``section.key=value`` changes to the run's config.yaml (see :func:`fif.runner.folder.resume_config`).
        on_event: as for :func:`run`; the events already logged are replayed to it first.
        progress: show tqdm progress bars.

    Raises:
        FileNotFoundError: ``run_dir`` is not a run folder.
        RunFolderError: the run already finished.
        RunFolderInUseError: another fif process works in the folder.
        ConfigError: an override is invalid or would change what the run computes.
        CheckpointError: the event log does not match the checkpoint.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"cannot resume {str(run_dir)!r}: no such run folder")
    rc = resume_config(run_dir, overrides)  # read-only on every rank; rank 0 rewrites it below
    ranks = join(
        rc.cfg.train.distributed, rc.cfg.run.device, rc.cfg.train.dist_timeout_minutes, rc.cfg.train.batch_size, resuming=True
    )
    main = ranks.is_main

    def pick_checkpoint():
        ckpt, skipped = latest_valid(run_dir / CHECKPOINT_DIR)
        for path, _ in skipped:
            quarantine(path)
        return ckpt

    with StopSignals(run_dir) as stop:
        lock = ranks.on_main(lambda: RunLock(run_dir).acquire())
        try:
            if is_finished(run_dir):
                raise RunFolderError(f"run {str(run_dir)!r} already finished (see its summary.json); nothing to resume")
            ckpt = ranks.on_main(pick_checkpoint)
            path = ranks.broadcast(None if ckpt is None else str(ckpt.path))
            if not main and path is not None:
                ckpt = load_checkpoint(Path(path))
            with ranks.main_first():
                ctx = setup(rc.cfg, run_dir, on_event if main else None, progress and main)
            attach(ctx, ranks)
            ctx.stop = stop
            if main:
                if rc.changed:
                    atomic_write_text(run_dir / "config.yaml", dump_yaml(rc.cfg))
                record_resume(run_dir, ckpt, rc.changed)
                for stale in ("summary.json", "final.safetensors"):
                    (run_dir / stale).unlink(missing_ok=True)
            if ckpt is None:  # stopped before the first checkpoint: start over in the same folder
                if main:
                    log.warning(f"{run_dir}: no valid checkpoint; starting the run over")
                    truncate_events(run_dir / "events.jsonl", 0, hashlib.sha256(b"").hexdigest())
                    open_sinks(ctx)
                return start_stream(ctx)
            current = restore_run_state(ctx, ckpt, rollback=False)
            if main:
                if on_event is not None:
                    for event in read_events(run_dir / "events.jsonl"):
                        on_event(event)
                open_sinks(ctx)
            return run_stream(ctx, ckpt.position, current)
        finally:
            if lock is not None:
                lock.release()


def start_stream(ctx: RunContext) -> RunResult:
    """Log the run start, evaluate the zero-shot model, checkpoint, and run every task."""
    cfg = ctx.cfg
    ctx.emit({
        "event": "run_start", "tasks": len(ctx.tasks), "method": cfg.method.name,
        "merge": {"preset": cfg.merge.preset, "init": cfg.merge.init, "deploy": cfg.merge.deploy},
        "step_gflops": ctx.step_cost.flops / 1e9, "mafs_per_step": mafs_per_step(ctx.step_cost, ctx.reference_cost),
        "budget_total_mafs": ctx.ledger.total_budget_mafs, "device": str(ctx.device), "precision": ctx.precision,
    })
    evaluate_deployed(ctx, -1, full=cfg.eval.full_at_ends)
    position = Position(0)
    save_run_checkpoint(ctx, position)
    return run_stream(ctx, position, None)


def run_stream(ctx: RunContext, position: Position, current: TaskRun | None) -> RunResult:
    """Every task from ``position`` on (rolling back on persistent non-finite steps), then the summary."""
    try:
        while True:
            try:
                for task in ctx.tasks[position.task:]:
                    run_task(ctx, task, current)
                    current = None
                break
            except _Rollback as r:
                position, current = roll_back(ctx, r.task, r.step)
        return finish(ctx)
    except BaseException:
        close_sinks(ctx)
        raise


def open_sinks(ctx: RunContext) -> None:
    """Mirror every event into the sinks of the ``log`` section (TensorBoard, W&B) after ``on_event``."""

    log_cfg = ctx.cfg.log
    if not (log_cfg.tensorboard or log_cfg.wandb):
        return
    log_path = ctx.out_dir / "events.jsonl"  # a resumed run's log so far: the sinks continue its step axis
    sinks = build_sinks(
        ctx.out_dir, log_cfg.tensorboard, log_cfg.wandb, log_cfg.wandb_project, log_cfg.wandb_mode,
        config=ctx.cfg.to_dict(), config_text=dump_yaml(ctx.cfg),
        history=list(read_events(log_path)) if log_path.is_file() else [],
    )
    if sinks:
        ctx.on_event = FanOut(ctx.on_event, sinks)


def close_sinks(ctx: RunContext) -> None:

    if isinstance(ctx.on_event, FanOut):
        ctx.on_event.close()


def finish(ctx: RunContext) -> RunResult:
    """Write the deployed weights and the summary."""
    if ctx.dist is not None and not ctx.dist.is_main:  # wait for rank 0's summary and return it
        ctx.dist.barrier()  # rank 0 has written summary.json and final.safetensors
        return RunResult(ctx.out_dir, json.loads((ctx.out_dir / "summary.json").read_text()), ctx.clip)
    chosen = deployed_weights(ctx)
    weights = chosen if chosen is not None else ctx.clip.model.state_dict()
    weights = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    meta = {"fif_version": __version__, "arch": ctx.cfg.model.arch, "seed": str(ctx.cfg.run.seed)}
    atomic_write_bytes(ctx.out_dir / "final.safetensors", safetensors_bytes(weights, meta))  # same weights, same bytes
    summary = summarize(list(read_events(ctx.out_dir / "events.jsonl")))
    summary["ledger"] = {**ctx.ledger.summary(), **ctx.ledger.to_dict()}
    atomic_write_json(ctx.out_dir / "summary.json", summary)
    if ctx.dist is not None:  # the other ranks read the summary now (follower_finish)
        ctx.dist.barrier()
    ctx.emit({"event": "run_end", **{k: summary["final"].get(k) for k in ("a_ka", "a_zs", "gm")}})
    close_sinks(ctx)
    deployed = ctx.clip
    if chosen is not None:  # merged weights, or adapter methods' plain base architecture
        deployed = replace(ctx.clip, model=ctx.method.deploy_model(weights))
    return RunResult(ctx.out_dir, summary, deployed)
