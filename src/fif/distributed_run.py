"""A run on several processes (``torchrun ... fif run train.distributed=ddp``): what every rank does and
what only rank 0 does.

- Every rank sets up the same run (rank 0 first, so base models and data caches are built once), plans
  the same steps from rank 0's measured step cost, trains its rows of each global batch under DDP
  (:mod:`fif.distributed`) and runs the same task hooks on the same data.
- Only rank 0 writes the run folder (config.yaml, run.json, events, checkpoints, merge history, summary,
  final weights), evaluates, prints and feeds the sinks. The others skip evaluation and wait for rank 0
  at their next collective (the next task's DDP broadcast, or the end of the run); the process group's
  timeout (``train.dist_timeout_minutes``) must outlast the longest evaluation.
- Temporal merging runs on rank 0 only: a task's start weights reach the other ranks through the
  broadcast DDP makes when it is built at the start of every task.
- A stop signal (SIGINT/SIGTERM) is honoured at the next logging step that every rank agrees on, with
  one checkpoint written by rank 0. Resume: every rank loads the checkpoint rank 0 picked.

:func:`run_on_ranks` and :func:`resume_on_ranks` mirror :func:`fif.runner.run` and
:func:`fif.runner.resume`, which call them.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from fif.distributed import Ranks, check_batch_size, global_batchnorm_, launched, start

if TYPE_CHECKING:
    from fif.config import Config
    from fif.runner import RunContext, RunResult


class NullEventLog:
    """The event log on ranks other than 0: same ``path`` (for reading), nothing written."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, event: dict[str, Any]) -> None:
        pass


class FollowerMerger:
    """The temporal merger on ranks other than 0: merges nothing, holds nothing, writes nothing (rank 0's
    merged start weights arrive with DDP's broadcast; deployed weights are evaluated on rank 0)."""

    def training_weights(self) -> None:
        return None

    def step_hook(self, model: Any) -> None:
        return None

    def end_task(self, task: int, latest: Callable[[], Any]) -> None:
        pass

    def deploy_weights(self, latest: Callable[[], Any]) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Any) -> None:
        pass


def attach(ctx: RunContext, ranks: Ranks) -> None:
    """Make a set-up run a rank of a data-parallel job (after :func:`fif.runner.setup` on every rank)."""
    ctx.dist = ranks
    # Every rank must take the same number of steps: rank 0's measured costs (CUDA peaks can differ) win.
    ctx.step_cost, ctx.reference_cost, ctx.ledger = ranks.broadcast((ctx.step_cost, ctx.reference_cost, ctx.ledger))
    global_batchnorm_(ctx.clip.model)  # after the budget's measurement: plain BatchNorm outside training steps
    if not ranks.is_main:
        ctx.events = NullEventLog(ctx.events.path)
        ctx.merger = FollowerMerger()
        ctx.on_event, ctx.progress = None, False


def follower_finish(ctx: RunContext) -> RunResult:
    """A rank other than 0 at the end of the run: wait for rank 0's summary and return it."""
    import json

    from fif.runner import RunResult

    ctx.dist.barrier()  # rank 0 has written summary.json and final.safetensors
    summary = json.loads((ctx.out_dir / "summary.json").read_text())
    return RunResult(ctx.out_dir, summary, ctx.clip)


def _provenance(ranks: Ranks) -> dict[str, Any]:
    return {"distributed": {"mode": "ddp", "world_size": ranks.world_size, "backend": ranks.backend}}


def run_on_ranks(
    cfg: Config, out_dir: str | Path | None, overwrite: bool, on_event: Callable[[dict], None] | None, progress: bool
) -> RunResult | None:
    """:func:`fif.runner.run` on every rank of a torchrun job; None when this is no such job (run in one process).

    Raises:
        ValueError: see :func:`fif.distributed.start`; a batch size that does not split over the ranks.
    """
    ranks = start(cfg.train.distributed, cfg.run.device, cfg.train.dist_timeout_minutes)
    if ranks is None:
        return None
    return _run(ranks, cfg, out_dir, overwrite, on_event, progress)  # the group lives until exit (a sweep's next run)


def _run(ranks: Ranks, cfg: Config, out_dir, overwrite: bool, on_event, progress: bool) -> RunResult:
    from fif import runner
    from fif.config import dump_yaml
    from fif.resume import StopSignals
    from fif.results import atomic_write_json, atomic_write_text

    check_batch_size(cfg.train.batch_size, ranks.world_size)
    out = Path(ranks.broadcast(str(out_dir or cfg.run.out or runner.default_out_dir(cfg))))  # rank 0's clock
    main = ranks.is_main
    with StopSignals(out) as stop:
        lock = ranks.on_main(lambda: runner.prepare_out_dir(out, overwrite))
        try:
            try:
                with ranks.main_first():
                    ctx = runner.setup(cfg, out, on_event if main else None, progress and main)
                attach(ctx, ranks)
                if main:
                    runner.open_sinks(ctx)
            except BaseException:
                if main:  # nothing was learned yet: leave no half-made run folder behind
                    shutil.rmtree(out, ignore_errors=True)
                raise
            ctx.stop = stop
            if main:
                atomic_write_text(out / "config.yaml", dump_yaml(cfg))
                atomic_write_json(out / "run.json", {
                    **runner.provenance(cfg), **_provenance(ranks), "tasks": [list(t.concepts) for t in ctx.tasks],
                })
            return runner.start_stream(ctx)
        finally:
            if lock is not None:
                lock.release()


def resume_on_ranks(
    run_dir: Path, overrides: list[str] | None, on_event: Callable[[dict], None] | None, progress: bool
) -> RunResult:
    """:func:`fif.runner.resume` on every rank of a torchrun job (the run's config must say train.distributed=ddp,
    or the command line: ``train.distributed=ddp``)."""
    from fif.resume import resume_config

    rc = resume_config(run_dir, overrides)  # read-only on every rank; rank 0 rewrites it later
    ranks = start(rc.cfg.train.distributed, rc.cfg.run.device, rc.cfg.train.dist_timeout_minutes)
    if ranks is None:  # launched() said several processes; start() returns None only for one
        raise ValueError("resume under torchrun found no process group; launch with torchrun --nproc_per_node=N")
    return _resume(ranks, run_dir, rc, on_event, progress)


def _resume(ranks: Ranks, run_dir: Path, rc, on_event, progress: bool) -> RunResult:
    from fif import runner
    from fif.checkpoint import CHECKPOINT_DIR, latest_valid, load_checkpoint, quarantine
    from fif.config import dump_yaml
    from fif.resume import RunLock, StopSignals
    from fif.results import atomic_write_text, read_events
    from fif.runstate import is_finished, record_resume, restore_run_state, truncate_events

    check_batch_size(rc.cfg.train.batch_size, ranks.world_size)
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
                raise runner.RunFolderError(f"run {str(run_dir)!r} already finished (see its summary.json); nothing to resume")
            ckpt = ranks.on_main(pick_checkpoint)
            path = ranks.broadcast(None if ckpt is None else str(ckpt.path))
            if not main and path is not None:
                ckpt = load_checkpoint(Path(path))
            with ranks.main_first():
                ctx = runner.setup(rc.cfg, run_dir, on_event if main else None, progress and main)
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
                    truncate_events(run_dir / "events.jsonl", 0, hashlib.sha256(b"").hexdigest())
                    runner.open_sinks(ctx)
                return runner.start_stream(ctx)
            current = restore_run_state(ctx, ckpt, rollback=False)
            if main:
                if on_event is not None:
                    for event in read_events(run_dir / "events.jsonl"):
                        on_event(event)
                runner.open_sinks(ctx)
            return runner.run_stream(ctx, ckpt.position, current)
        finally:
            if lock is not None:
                lock.release()


__all__ = ["attach", "follower_finish", "launched", "resume_on_ranks", "run_on_ranks"]
