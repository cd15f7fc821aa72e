"""The stream loop: for each task, begin_task → train → end_task → evaluate → record.

:func:`run` is the library entry point behind ``fif run``. It reads a validated :class:`Config`,
writes a run folder (config.yaml, run.json, events.jsonl, summary.json, final.safetensors) and returns
a :class:`RunResult`. It never prints: progress goes through ``on_event`` and tqdm bars.

A run is its :class:`~fif.runner.spec.RunSpec` (what it is, built once by :func:`setup` in
:mod:`fif.runner.setup`) and its :class:`~fif.runner.state.RunState` (what it changes as it goes; exactly
what a checkpoint holds beside the components' own state). Each task's work (:func:`run_task` and its
builders) lives in :mod:`fif.runner.task`; both are re-exported here.

One process is a world of size 1 (:class:`~fif.train.distributed.Solo`), so :func:`run` and :func:`resume`
are written once; what only rank 0 does (write the run folder, feed the sinks) is marked ``if main``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from fif.budget import GIB, mafs_per_step
from fif.config import Config, dump_yaml
from fif.core.finite import describe_nonfinite, nonfinite_counts
from fif.core.io import (
    STORAGE_ERRNOS,
    StorageError,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    human_bytes,
    safetensors_bytes,
)
from fif.core.version import __version__
from fif.methods import deploy_model_for
from fif.model.clip import Clip
from fif.results.events import read_events, summarize
from fif.results.sinks import build_sinks
from fif.runner import samples
from fif.runner.checkpoint import (
    CHECKPOINT_DIR,
    Checkpoint,
    Position,
    latest_valid,
    list_checkpoints,
    load_checkpoint,
    quarantine,
)
from fif.runner.distributed import dist_provenance, join, share_plan
from fif.runner.folder import RunLock, StopSignals, TrainingDivergedError, check_checkpoint_config, resume_config
from fif.runner.setup import RUN_MARKER, RunFolderError, claim_default_out_dir, prepare_out_dir, setup
from fif.runner.spec import RunSpec
from fif.runner.state import RunState, TaskRun, is_finished, record_resume, save_run_checkpoint, truncate_events
from fif.runner.task import (  # noqa: F401  (re-exported, as above)
    StepEvals,
    _Rollback,
    batch_iterator,
    buffer_pool,
    close_workers,
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
    train_steps,
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
    chosen = out_dir or cfg.run.out  # else rank 0 claims a new folder under runs/
    out = Path(ranks.broadcast(str(chosen) if chosen else ranks.on_main(lambda: str(claim_default_out_dir(cfg)))))
    with StopSignals(out) as stop:
        lock = ranks.on_main(lambda: prepare_out_dir(out, overwrite))
        try:
            try:
                info = {**provenance(cfg), **dist_provenance(ranks)}
                if main:  # first: a run killed in setup leaves a folder fif recognises, to resume or run again
                    atomic_write_text(out / "config.yaml", dump_yaml(cfg))
                    atomic_write_json(out / RUN_MARKER, info)
                with ranks.main_first():  # the other ranks find what rank 0 cached (base model, data)
                    spec, state = setup(cfg, out, on_event, progress, ranks, stop)
                state = share_plan(spec, state)
                if main:
                    open_sinks(spec)
            except BaseException:
                if main:  # nothing was learned yet: leave no half-made run folder behind
                    shutil.rmtree(out, ignore_errors=True)
                raise
            if main:
                atomic_write_json(out / RUN_MARKER, {**info, "tasks": [list(t.concepts) for t in spec.tasks]})
            with storage_advice(out):
                return start_stream(spec, state)
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
    with StopSignals(run_dir) as stop:
        lock = ranks.on_main(lambda: RunLock(run_dir).acquire())
        try:
            if is_finished(run_dir):
                raise RunFolderError(f"run {str(run_dir)!r} already finished (see its summary.json); nothing to resume")
            ckpt = ranks.on_main(lambda: pick_checkpoint(run_dir, rc.cfg))
            path = ranks.broadcast(None if ckpt is None else str(ckpt.path))  # every rank loads rank 0's pick
            if not main and path is not None:
                ckpt = load_checkpoint(Path(path))
            with ranks.main_first():
                spec, state = setup(rc.cfg, run_dir, on_event, progress, ranks, stop)
            state = share_plan(spec, state)
            if main:
                mark_resumed(run_dir, ckpt, rc.cfg if rc.changed else None, rc.changed)
            if ckpt is None:  # stopped before the first checkpoint: start over in the same folder
                if main:
                    log.warning(f"{run_dir}: no valid checkpoint; starting the run over")
                    truncate_events(spec.events.path, 0, hashlib.sha256(b"").hexdigest())
                    write_provenance(run_dir, spec, ranks)
                    open_sinks(spec)
                with storage_advice(run_dir):
                    return start_stream(spec, state)
            state, current = restore_run_state(spec, ckpt)
            if main:
                events = ckpt.state["events"]
                dropped = truncate_events(spec.events.path, events["bytes"], events["sha256"])
                log.info(f"resuming from {ckpt.path.name}; dropped {dropped} events logged after it")
                if on_event is not None:
                    for event in read_events(spec.events.path):
                        on_event(event)
                open_sinks(spec)
            with storage_advice(run_dir):
                return run_stream(spec, state, ckpt.position, current)
        finally:
            if lock is not None:
                lock.release()


@contextlib.contextmanager
def storage_advice(run_dir: Path) -> Iterator[None]:
    """A write the storage refused (disk full, read-only, ...) ends the run with what was kept and how to go on.

    Raises:
        StorageError: naming the file, the newest checkpoint kept, the space one checkpoint needs, and the
            command that continues the run.
    """
    try:
        yield
    except OSError as e:
        if e.errno not in STORAGE_ERRNOS:
            raise
        kept = list_checkpoints(run_dir / CHECKPOINT_DIR)
        where = f"its newest checkpoint, {kept[-1][1].name}, is intact" if kept else "it has no checkpoint yet"
        size = checkpoint_bytes(kept[-1][1]) if kept else getattr(e, "nbytes", None)
        need = f" (a checkpoint needs about {human_bytes(size)})" if size else ""
        raise StorageError(
            e.errno, f"{os.strerror(e.errno)}: cannot write {e.filename}. The run stopped and {where}. Free space"
            f"{need} or make {run_dir} writable, then continue with: fif run --resume {run_dir}", e.filename,
        ) from e


def checkpoint_bytes(path: Path) -> int:
    """The size of a checkpoint folder's files."""
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def pick_checkpoint(run_dir: Path, cfg: Config | None = None) -> Checkpoint | None:
    """The run's newest checkpoint that verifies; the newer ones that do not are quarantined.

    Raises:
        ConfigError: ``cfg`` (what the run would resume with) differs from the checkpoint's recorded
            config in a key that cannot change on resume (see :func:`fif.runner.folder.check_checkpoint_config`).
    """
    ckpt, skipped = latest_valid(run_dir / CHECKPOINT_DIR)
    if ckpt is not None and cfg is not None:  # before quarantining: a refused resume changes nothing
        check_checkpoint_config(cfg, ckpt.manifest, ckpt.path.name)
    for path, _ in skipped:
        quarantine(path)
    return ckpt


def write_provenance(run_dir: Path, spec: RunSpec, ranks) -> None:
    """Write run.json's provenance and tasks afresh for a run started over in its folder (keeping its resumes)."""
    path = run_dir / RUN_MARKER
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    resumes = old.get("resumes", []) if isinstance(old, dict) else []
    atomic_write_json(path, {**provenance(spec.cfg), **dist_provenance(ranks),
                             "tasks": [list(t.concepts) for t in spec.tasks], "resumes": resumes})


def mark_resumed(run_dir: Path, ckpt: Checkpoint | None, new_cfg: Config | None, changed: dict) -> None:
    """Record the resume in run.json, write the changed config (``new_cfg``, None if unchanged) and remove
    the results of an earlier finish, which the resumed run writes again."""
    if new_cfg is not None:
        atomic_write_text(run_dir / "config.yaml", dump_yaml(new_cfg))
    record_resume(run_dir, ckpt, changed)
    for stale in ("summary.json", "final.safetensors"):
        (run_dir / stale).unlink(missing_ok=True)


def start_stream(spec: RunSpec, state: RunState) -> RunResult:
    """Log the run start, evaluate the zero-shot model, checkpoint, and run every task."""
    cfg = spec.cfg
    spec.emit({
        "event": "run_start", "tasks": len(spec.tasks), "method": cfg.method.name,
        "merge": {"preset": cfg.merge.preset, "init": cfg.merge.init, "deploy": cfg.merge.deploy},
        "step_gflops": state.step_cost.flops / 1e9, "mafs_per_step": mafs_per_step(state.step_cost, state.reference_cost),
        "budget_total_mafs": state.ledger.total_budget_mafs, "accounting": state.ledger.accounting,
        "device": str(spec.device), "precision": spec.precision,
        "device_peak_gib": state.step_cost.device_peak_bytes / GIB,
        "device_batch_size": state.step_cost.device_batch_size, "layout": state.step_cost.layout,
    })
    try:
        evaluate_deployed(spec, -1, full=cfg.eval.full_at_ends)
        samples.collect(spec, state, -1)  # unreadable test images the zero-shot evaluation replaced
        position = Position(0)
        save_run_checkpoint(spec, state, position)
    except BaseException:
        close_workers(spec)  # the evaluation's
        raise
    return run_stream(spec, state, position, None)


def run_stream(spec: RunSpec, state: RunState, position: Position, current: TaskRun | None) -> RunResult:
    """Every task from ``position`` on (rolling back on persistent non-finite steps), then the summary."""
    try:
        while True:
            try:
                for task in spec.tasks[position.task:]:
                    run_task(spec, state, task, current)
                    current = None
                break
            except _Rollback as r:
                position, state, current = roll_back(spec, state, r.task, r.step, r.reason)
        return finish(spec, state)
    except BaseException:
        close_sinks(spec)
        raise
    finally:
        close_workers(spec)  # the run's data workers (training batches, evaluation)


def open_sinks(spec: RunSpec) -> None:
    """Mirror every event into the sinks of the ``log`` section (TensorBoard, W&B) after ``on_event``."""
    log_cfg = spec.cfg.log
    if not (log_cfg.tensorboard or log_cfg.wandb):
        return
    log_path = spec.events.path  # a resumed run's log so far: the sinks continue its step axis
    sinks = build_sinks(
        spec.out_dir, log_cfg.tensorboard, log_cfg.wandb, log_cfg.wandb_project, log_cfg.wandb_mode,
        config=spec.cfg.to_dict(), config_text=dump_yaml(spec.cfg),
        history=list(read_events(log_path)) if log_path.is_file() else [],
    )
    spec.events.add_sinks(sinks)


def close_sinks(spec: RunSpec) -> None:
    spec.events.close()


def finish(spec: RunSpec, state: RunState) -> RunResult:
    """Write the deployed weights and the summary (rank 0; the other ranks return rank 0's summary)."""
    if not spec.ranks.is_main:  # rank 0 writes the results; the others wait for them
        spec.ranks.barrier()  # rank 0 has written summary.json and final.safetensors
        return RunResult(spec.out_dir, json.loads((spec.out_dir / "summary.json").read_text()), spec.clip)
    chosen = deployed_weights(spec)
    weights = chosen if chosen is not None else spec.clip.model.state_dict()
    weights = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    if bad := nonfinite_counts(weights):  # the last line of defence: never ship a diverged model
        raise TrainingDivergedError(
            f"the deployed weights hold {describe_nonfinite(bad)}; final.safetensors and summary.json were not "
            f"written. The checkpoints in {spec.out_dir / CHECKPOINT_DIR} are finite: continue with "
            f"fif run --resume {spec.out_dir} train.lr=... (lower), or check method.* and merge.*"
        )
    meta = {"fif_version": __version__, "arch": spec.cfg.model.arch, "seed": str(spec.cfg.run.seed)}
    atomic_write_bytes(spec.out_dir / "final.safetensors", safetensors_bytes(weights, meta))  # same weights, same bytes
    summary = summarize(list(read_events(spec.events.path)))
    summary["ledger"] = {**state.ledger.summary(), **state.ledger.to_dict()}
    atomic_write_json(spec.out_dir / "summary.json", summary)
    spec.ranks.barrier()  # the other ranks read the summary now
    spec.emit({"event": "run_end", **{k: summary["final"].get(k) for k in ("a_ka", "a_zs", "gm")}})
    close_sinks(spec)
    deployed = spec.clip
    if chosen is not None:  # merged weights, or adapter methods' plain base architecture
        deployed = replace(spec.clip, model=deploy_model_for(spec.method, spec.clip.model, weights))
    return RunResult(spec.out_dir, summary, deployed)
