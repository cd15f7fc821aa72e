"""The stream loop: for each task, begin_task → train → end_task → evaluate → record.

:func:`run` is the library entry point behind ``fif run``. It reads a validated :class:`Config`,
writes a run folder (config.yaml, run.json, events.jsonl, summary.json, final.safetensors) and returns
a :class:`RunResult`. It never prints: progress goes through ``on_event`` and tqdm bars.
"""

from __future__ import annotations

import hashlib
import logging
import math
import platform
import random
import shutil
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fif import __version__
from fif.budget import Ledger, StepCost, hook_cost_mafs, mafs_per_step, measure_step_cost, run_budget_mafs
from fif.budget.mafs import steps_for_task
from fif.checkpoint import CHECKPOINT_DIR, Position, latest_valid, quarantine, safetensors_bytes
from fif.config import Config, dump_yaml
from fif.data.mixture import MixedBatches, MixtureSampler, Pool, batch_counts
from fif.data.pool import load_pool
from fif.data.registry import Benchmark, benchmark_options, get_benchmark
from fif.data.stream import Task, build_tasks, ordering_options, task_indices
from fif.distributed import launched
from fif.evaluate import Evaluator
from fif.merge.temporal import HISTORY_DIR, TemporalMerger
from fif.methods import TaskInfo, UpdateMethod, build_method, freeze_all_but
from fif.methods.finetune import Finetune
from fif.model.clip import Clip, build_clip
from fif.resume import RunInterrupted, RunLock, StopSignals, TrainingDivergedError, resume_config
from fif.runstate import (
    GuardState,
    TaskRun,
    is_finished,
    record_resume,
    restore_run_state,
    roll_back,
    save_run_checkpoint,
    truncate_events,
)
from fif.results import EventLog, atomic_write_bytes, atomic_write_json, atomic_write_text, read_events, summarize
from fif.schedules import schedule_from_config, task_curve
from fif.train import (
    OptimConfig,
    batchnorm_accumulation_warning,
    build_optimizer,
    carry_optimizer_state,
    enable_grad_checkpointing,
    fix_temperature_,
    TaskLog,
    resolve_precision,
    train_task,
)

log = logging.getLogger(__name__)

MINI_BASE = "mini-base"  # model.pretrained value: build (or reuse) the cached mini base model


class RunFolderError(FileExistsError):
    """The run folder exists and neither overwrite nor resume was asked for."""


class _Rollback(Exception):
    """Raised out of a task when ``guard.max_bad_steps`` consecutive steps were non-finite."""

    def __init__(self, task: int, step: int):
        super().__init__(f"task {task} step {step}")
        self.task, self.step = task, step


@dataclass
class RunResult:
    """What a finished run returns: its folder, summary and (optionally) the deployed model."""

    out_dir: Path
    summary: dict[str, Any]
    clip: Clip | None = None

    @property
    def final(self) -> dict[str, Any]:
        return self.summary["final"]


@dataclass
class RunContext:
    """Everything built once per run, before the first task."""

    cfg: Config
    out_dir: Path
    device: torch.device
    precision: str
    benchmark: Benchmark
    clip: Clip
    method: UpdateMethod
    tasks: list[Task]
    evaluator: Evaluator
    events: EventLog
    ledger: Ledger
    step_cost: StepCost
    reference_cost: StepCost
    pretraining_pool: Pool | None
    buffer_segments: list = field(default_factory=list)
    optimizer: torch.optim.Optimizer | None = None  # the last task's (train.optimizer_reset=false carries it)
    guard: GuardState = field(default_factory=GuardState)
    stop: StopSignals | None = None
    on_event: Callable[[dict], None] | None = None
    progress: bool = False
    merger: TemporalMerger | None = None  # the merge section's init/deploy axes (set by setup)
    dist: Any = None  # fif.distributed.Ranks on each rank of a data-parallel run (fif.distributed_run); None: one process

    def emit(self, event: dict) -> None:
        event = {"event": event.pop("event"), "time": round(time.time(), 3), **event}
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)


def default_out_dir(cfg: Config, root: str | Path = "runs") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    bench = Path(cfg.data.benchmark).stem if cfg.data.benchmark.endswith((".yaml", ".yml")) else cfg.data.benchmark
    return Path(root) / f"{stamp}-{bench}-{cfg.method.name}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"run.device={name!r} but no CUDA device is available; use run.device=cpu or auto")
    return device


def prepare_out_dir(out_dir: Path, overwrite: bool) -> RunLock:
    """Create and lock the run folder; refuse an existing non-empty one unless ``overwrite``.

    Returns:
        The held lock (release it when the run ends).

    Raises:
        RunFolderInUseError: another fif process works in the folder.
        RunFolderError: the folder holds something and ``overwrite`` is False, or is not a fif run folder.
    """
    existed, had_lock = out_dir.exists(), (out_dir / RunLock.NAME).exists()
    lock = RunLock(out_dir).acquire()
    try:
        entries = [p for p in out_dir.iterdir() if p.name != RunLock.NAME]
        if entries:
            if not overwrite:
                raise RunFolderError(
                    f"run folder {str(out_dir)!r} already exists; pass --overwrite to replace it, "
                    f"--resume {out_dir} to continue it, or choose another --out"
                )
            if not (out_dir / "events.jsonl").exists() and not (out_dir / "config.yaml").exists():
                raise RunFolderError(f"refusing to overwrite {str(out_dir)!r}: it does not look like a fif run folder")
            for entry in entries:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    except BaseException:
        lock.release()
        if not existed:
            shutil.rmtree(out_dir, ignore_errors=True)
        elif not had_lock:
            lock.path.unlink(missing_ok=True)
        raise
    return lock


def load_model(
    cfg: Config, device: torch.device, on_event: Callable[[dict], None] | None = None, progress: bool = False
) -> Clip:
    """Build the base model; ``model.pretrained=mini-base`` builds/caches the mini base model first."""
    pretrained = cfg.model.pretrained
    if pretrained == MINI_BASE:
        from fif.pretrain import PretrainSpec, ensure_base_model

        spec = PretrainSpec(arch=cfg.model.arch, benchmark=cfg.data.benchmark)
        if on_event:
            on_event({"event": "base_model", "status": "checking", "arch": cfg.model.arch})
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=spec.steps, desc="base model", leave=False, unit="step")

        def on_log(step: int, loss: float) -> None:
            if bar is not None:
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{loss:.3f}")

        try:
            path, built = ensure_base_model(cfg.run.cache_dir, spec, cfg.data.options, device, on_log=on_log)
        finally:
            if bar is not None:
                bar.close()
        if on_event:
            on_event({"event": "base_model", "status": "built" if built else "cached", "path": str(path)})
        pretrained = str(path)
    return build_clip(cfg.model.arch, pretrained=pretrained, device=device, attention=cfg.model.attention)


def setup(cfg: Config, out_dir: Path, on_event=None, progress: bool = False) -> RunContext:
    """Build benchmark, model, method, tasks, budget and evaluator for a run (no training yet)."""
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)  # all global RNGs: a run does not depend on what its process did before
    np.random.seed(cfg.run.seed)
    random.seed(cfg.run.seed)
    device = resolve_device(cfg.run.device)
    precision = resolve_precision(cfg.train.precision, device)
    benchmark = get_benchmark(cfg.data.benchmark, **benchmark_options(cfg.data.options, cfg.data.root))
    pool_name = cfg.data.mixture.pool or benchmark.pretraining_pool
    pretraining_pool = None
    if cfg.data.mixture.pretraining > 0:
        if not pool_name:
            raise ValueError(
                f"data.mixture.pretraining={cfg.data.mixture.pretraining} but benchmark {benchmark.name!r} has no "
                "pretraining pool; set data.mixture.pool or data.mixture.pretraining=0"
            )
        pool_data = load_pool(benchmark, pool_name, index_dir=Path(cfg.run.cache_dir).expanduser() / "wds_index")
        pretraining_pool = Pool([(pool_data, np.arange(len(pool_data)))])
    clip = load_model(cfg, device, on_event, progress)
    # After the model: the similarity and easy-to-hard orderings embed and score with the base model.
    tasks = build_tasks(
        benchmark, cfg.stream.ordering, cfg.stream.tasks, seed=cfg.run.seed, reverse=cfg.stream.reverse,
        file=cfg.stream.file, datasets=cfg.stream.datasets, reference=cfg.stream.reference, clip=clip, device=device,
        options=ordering_options(cfg.stream, cfg.eval.batch_size, precision),
    )
    reference_cost = measure_step_cost(clip, Finetune(clip, None), cfg.train.batch_size, device)
    method = build_method(cfg.method.name, cfg.method.options, clip, label_smoothing=cfg.train.label_smoothing)
    freeze_all_but(clip.model, method.trainable_parameters())
    step_cost = measure_step_cost(clip, method, cfg.train.batch_size, device)
    if cfg.train.grad_checkpointing:  # after measuring: the budget charges the method, not the memory trick
        enable_grad_checkpointing(clip.model)
    if (warning := batchnorm_accumulation_warning(clip.model, cfg.train.grad_accum_steps)) is not None:
        log.warning(warning)
    total = run_budget_mafs(cfg.budget.ft_steps, cfg.budget.mafs, reference_cost)
    ledger = Ledger.for_run(total, max(len(tasks), 1))  # zeroshot reference: no task, the budget stays unspent
    if tasks:  # fail before any result is written, not at the first task
        steps_for_task(min(t.budget_mafs for t in ledger.tasks), mafs_per_step(step_cost, reference_cost))
    evaluator = Evaluator(
        benchmark, cfg.eval.datasets, cfg.eval.batch_size, cfg.eval.subset_frac, cfg.eval.min_samples,
        cfg.eval.ensemble, seed=cfg.run.seed,
    )
    merger = TemporalMerger(
        cfg.merge, out_dir / HISTORY_DIR, clip.model, method.deploy_weights,
        {"fif_version": __version__, "arch": cfg.model.arch, "seed": str(cfg.run.seed)},
    )
    return RunContext(
        cfg, out_dir, device, precision, benchmark, clip, method, tasks, evaluator, EventLog(out_dir / "events.jsonl"),
        ledger, step_cost, reference_cost, pretraining_pool, on_event=on_event, progress=progress, merger=merger,
    )


def latest_weights(ctx: RunContext) -> dict[str, torch.Tensor]:
    """The method's deployed weights now, else the model's (what the temporal merger merges)."""
    own = ctx.method.deploy_weights()
    return own if own is not None else ctx.clip.model.state_dict()


def deployed_weights(ctx: RunContext) -> dict[str, torch.Tensor] | None:
    """What to evaluate and ship: the temporal merger's merge if it deploys one, else the method's own."""
    own = ctx.method.deploy_weights()
    merged = ctx.merger.deploy_weights(lambda: own if own is not None else ctx.clip.model.state_dict())
    return merged if merged is not None else own


def evaluate_deployed(ctx: RunContext, task: int, full: bool) -> dict[str, float]:
    """Evaluate the method's deployed weights and log an ``eval`` event; returns per-dataset scores."""
    if ctx.dist is not None and not ctx.dist.is_main:  # rank 0 evaluates; the others wait at their next collective
        return {}
    clip = ctx.clip
    weights = deployed_weights(ctx)
    if weights is not None:
        model = ctx.method.deploy_model(weights)  # a copy; the base architecture for adapter methods
        clip = Clip(model, ctx.clip.tokenizer, ctx.clip.arch, ctx.clip.image_size, ctx.clip.mean, ctx.clip.std)
    t0 = time.perf_counter()
    scores = ctx.evaluator.run(clip, ctx.device, subset=not full, precision=eval_precision(ctx))
    ctx.emit({
        "event": "eval",
        "task": task,
        "full": full,
        "seconds": round(time.perf_counter() - t0, 3),
        "scores": {s.dataset: round(s.score, 4) for s in scores},
        "roles": {s.dataset: s.role for s in scores},
        "metrics": {s.dataset: {k: round(v, 4) for k, v in s.metrics.items()} for s in scores},
        "samples": {s.dataset: s.samples for s in scores},
    })
    return {s.dataset: s.score for s in scores}


def eval_precision(ctx: RunContext) -> str:
    """``eval.precision``, where ``auto`` means the training precision."""
    return ctx.precision if ctx.cfg.eval.precision == "auto" else ctx.cfg.eval.precision


def evaluate_in_task(ctx: RunContext, task: int, step: int) -> float:
    """Evaluate the weights being trained, mid-task, on the stream subsets (``eval.every_steps``).

    Logs an ``eval_step`` event (it never counts as the task's point in the summary) and returns the
    seconds it took, which the caller keeps out of the task's training time.
    """
    t0 = time.perf_counter()
    scores = ctx.evaluator.run(ctx.clip, ctx.device, subset=True, precision=eval_precision(ctx))
    seconds = time.perf_counter() - t0
    ctx.emit({
        "event": "eval_step", "task": task, "step": step, "full": False, "seconds": round(seconds, 3),
        "scores": {s.dataset: round(s.score, 4) for s in scores}, "roles": {s.dataset: s.role for s in scores},
    })
    return seconds


class StepEvals:
    """``eval.every_steps``: the ``on_step`` hook that evaluates inside a task (``hook`` is None when off).

    Evaluates every N steps except the task's last, which the end-of-task evaluation covers, and adds up
    the seconds so the task's training time excludes them.
    """

    def __init__(self, ctx: RunContext, task: int, steps: int):
        self.ctx, self.task, self.steps = ctx, task, steps
        self.every = ctx.cfg.eval.every_steps
        self.seconds = 0.0
        self.hook = self._on_step if self.every > 0 and (ctx.dist is None or ctx.dist.is_main) else None

    def _on_step(self, tlog: Any) -> None:
        if tlog.steps % self.every == 0 and tlog.steps < self.steps:
            self.seconds += evaluate_in_task(self.ctx, self.task, tlog.steps)


def task_pool(ctx: RunContext, task: Task) -> Pool:
    """The training samples of a task's concepts (after the task, they join the buffer)."""
    return Pool([(ctx.benchmark.load(d, "train"), idx) for d, idx in task_indices(task, ctx.benchmark).items()])


def task_info(ctx: RunContext, task: Task, steps: int) -> TaskInfo:
    """What the method sees of a task, with ``batches(batch_size)``: one pass over the task's own training
    data on the device, seeded apart from the training batches (purpose ``"task-hook"``), for task hooks
    such as EWC's Fisher pass, each sample labelled with its concept; the run seed; and
    ``reference_texts(n)``, n pretraining-pool captions drawn with the run seed (ZSCL's reference set)."""
    from fif.data.mixture import concept_labels, pool_batches, pool_captions
    from fif.data.stream import rng_for
    from fif.train import to_device

    pool, clip, seed = task_pool(ctx, task), ctx.clip, ctx.cfg.run.seed

    def batches(batch_size: int):
        labels = concept_labels(pool, task.concepts)
        for batch in pool_batches(
            pool, batch_size, clip.tokenize, clip.normalize, clip.image_size, seed, ("task-hook", task.index), labels
        ):
            yield to_device(batch, ctx.device)

    reference_texts = None
    if ctx.pretraining_pool is not None:
        def reference_texts(n: int) -> list[str]:
            return pool_captions(ctx.pretraining_pool, n, rng_for(seed, "reference-texts"))

    return TaskInfo(
        task.index, len(ctx.tasks), list(task.concepts), steps, num_samples=len(pool), batches=batches, seed=seed,
        reference_texts=reference_texts,
    )


def task_batches(ctx: RunContext, task: Task, steps: int) -> MixedBatches:
    """The task's mixed batches (update = its concepts, buffer = all earlier tasks, pool = pretraining)."""
    cfg = ctx.cfg
    update = task_pool(ctx, task)
    buffer = Pool(ctx.buffer_segments) if ctx.buffer_segments else None
    if buffer is not None and cfg.data.mixture.buffer_cap:
        from fif.data.stream import rng_for

        buffer = buffer.subsample(cfg.data.mixture.buffer_cap, rng_for(cfg.run.seed, "buffer-cap", task.index))
    m = cfg.data.mixture
    counts = batch_counts(cfg.train.batch_size, m.pretraining, m.update, m.buffer, buffer_empty=buffer is None)
    sampler = MixtureSampler(counts, update, buffer, ctx.pretraining_pool, seed=cfg.run.seed, task=task.index)
    return MixedBatches(sampler, ctx.clip.tokenize, ctx.clip.normalize, ctx.clip.image_size, steps)


def batch_iterator(batches: MixedBatches, start: int, num_workers: int):
    """Batches ``start..`` in order; with workers, prefetched in background processes."""
    if num_workers <= 0:
        return (batches[i] for i in range(start, len(batches)))
    subset = torch.utils.data.Subset(batches, range(start, len(batches)))
    return iter(torch.utils.data.DataLoader(subset, batch_size=None, num_workers=num_workers, persistent_workers=False))


def start_task(ctx: RunContext, task: Task) -> TaskRun:
    """Plan the task's steps, announce it, run ``begin_task``, load its start weights, build its optimizer."""
    method = ctx.method
    step_mafs = mafs_per_step(ctx.step_cost, ctx.reference_cost)
    info = task_info(ctx, task, steps=0)
    hook_mafs = hook_cost_mafs(method.extra_cost(info), ctx.reference_cost)
    info.steps = ctx.ledger.plan(task.index, step_mafs, hook_mafs)
    if ctx.dist is not None:  # every rank takes rank 0's steps (a hook's measured cost may differ per GPU)
        info.steps = ctx.dist.broadcast(info.steps)
    ctx.emit({"event": "task_start", "task": task.index, "concepts": len(task.concepts), "steps": info.steps})

    method.begin_task(info)
    ctx.ledger.charge(task.index, hook_mafs=hook_mafs)
    start_weights = method.training_weights()
    if start_weights is not None:
        ctx.clip.model.load_state_dict(start_weights)
    merged_start = ctx.merger.training_weights()  # merge.init: θ0, the running merge, ... (None = as is)
    if merged_start is not None:
        ctx.clip.model.load_state_dict(merged_start)
    return TaskRun(info, task_optimizer(ctx), TaskLog())


def task_optimizer(ctx: RunContext, state: dict | None = None) -> torch.optim.Optimizer:
    """The task's optimizer (after fixing the temperature, which takes logit_scale out of it).

    With ``state`` (a checkpoint's) it is loaded; else ``train.optimizer_reset=false`` carries the last
    task's moments over.
    """
    t = ctx.cfg.train
    if t.temperature == "fixed":  # after the start weights, which may hold another logit_scale
        fix_temperature_(ctx.clip.model, t.fixed_logit_scale)
    named, optim_cfg = ctx.method.trainable_parameters(), OptimConfig(
        t.weight_decay, (t.beta1, t.beta2), t.eps, t.optimizer, t.optimizer_impl
    )
    optimizer = ctx.method.build_optimizer(named, t.lr, optim_cfg) or build_optimizer(named, t.lr, optim_cfg)
    if state is not None:
        optimizer.load_state_dict(state)
    elif not t.optimizer_reset:
        carry_optimizer_state(ctx.optimizer, optimizer)
    ctx.optimizer = optimizer
    return optimizer


def run_task(ctx: RunContext, task: Task, current: TaskRun | None = None) -> None:
    """One task: budget → begin_task → train → end_task → evaluate → checkpoint.

    ``current`` continues a task restored from a mid-task checkpoint (its steps so far are kept).

    Raises:
        _Rollback: ``guard.max_bad_steps`` consecutive non-finite steps (the caller rolls back).
        RunInterrupted: SIGINT/SIGTERM (a checkpoint of the current step was written first).
    """
    cfg, method = ctx.cfg, ctx.method
    num_tasks = len(ctx.tasks)
    current = current or start_task(ctx, task)
    info, optimizer, steps = current.info, current.optimizer, current.info.steps
    lr_curve = task_curve(schedule_from_config(cfg.train), task.index, steps, num_tasks)
    batches = task_batches(ctx, task, steps)
    bar = None
    if ctx.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=current.log.steps, desc=f"task {task.index + 1}/{num_tasks}", leave=False, unit="step")
    step_evals = StepEvals(ctx, task.index, steps)
    merge_step = ctx.merger.step_hook(ctx.clip.model)  # online EMA: device ops only, or None

    def on_log(step: int, loss: float) -> None:
        skips = current.log.skips
        extra = {"skipped": skips[-1][1]} if skips and skips[-1][0] == step else {}
        ctx.emit({"event": "train", "task": task.index, "step": step, "loss": finite_or_none(loss, 6), **extra})
        if bar is not None:
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}")

    def on_step(log: TaskLog) -> None:  # Python only; acts (and syncs) at eval/checkpoint steps or on a signal
        if merge_step is not None:  # first: a checkpoint of this step holds the EMA after it
            merge_step()
        if step_evals.hook is not None:  # before the checkpoint, so a resume from this step keeps its eval
            step_evals.hook(log)
        every = cfg.checkpoint.every_steps
        stop = ctx.stop is not None and ctx.stop.requested
        if ctx.dist is not None:  # ranks stop at the same step: they agree at logging steps (a sync point anyway)
            stop = ctx.dist.agree(stop) if log.steps % cfg.train.log_every == 0 or log.steps == steps else False
        if stop or (every and log.steps % every == 0 and log.steps < steps):
            path = save_run_checkpoint(ctx, Position(task.index, True, log.steps), log, optimizer)
            if stop:
                raise RunInterrupted(ctx.stop.signum, ctx.out_dir, path)

    if ctx.stop is not None:
        ctx.stop.deferred = True  # a signal now stops after the current step, with a checkpoint
    model, feed = ctx.clip.model, batches
    if ctx.dist is not None:  # DDP over this rank's rows of each global batch (built now: it broadcasts rank 0's weights)
        model, feed = ctx.dist.wrap(model), ctx.dist.shard(batches)
    try:
        tlog = train_task(
            model, method, optimizer, batch_iterator(feed, current.log.steps, cfg.data.num_workers),
            lambda s: float(lr_curve[s]) * ctx.guard.lr_scale, steps, ctx.device, ctx.precision,
            cfg.train.grad_clip, cfg.train.log_every, on_log=on_log, grad_accum_steps=cfg.train.grad_accum_steps,
            log=current.log, on_step=on_step, max_bad_steps=cfg.guard.max_bad_steps,
        )
    finally:
        if ctx.stop is not None:
            ctx.stop.deferred = False
        if bar is not None:
            bar.close()
    del model  # the task's DDP
    if tlog.rollback:
        raise _Rollback(task.index, tlog.steps)
    stopped = ctx.stop is not None and ctx.stop.requested
    if ctx.dist is not None:
        stopped = ctx.dist.agree(stopped)
    if stopped:  # signalled after the last step's check
        path = save_run_checkpoint(ctx, Position(task.index, True, tlog.steps), tlog, optimizer)
        raise RunInterrupted(ctx.stop.signum, ctx.out_dir, path)
    method.end_task(info)
    ctx.merger.end_task(task.index, lambda: latest_weights(ctx))
    ctx.ledger.charge(task.index, steps=tlog.steps)
    ctx.buffer_segments.extend(batches.sampler.pools["update"].segments)
    last = task.index == num_tasks - 1
    ctx.emit({
        "event": "task_end", "task": task.index, "concepts": len(task.concepts), "steps": steps,
        "train_seconds": round(max(tlog.seconds - step_evals.seconds, 0.0), 3),
        "spent_mafs": ctx.ledger.tasks[task.index].spent_mafs,
        "budget_mafs": ctx.ledger.tasks[task.index].budget_mafs, "budget_total_mafs": ctx.ledger.total_budget_mafs,
        "final_loss": finite_or_none(tlog.losses[-1][1]) if tlog.losses else None,
        "skipped_steps": tlog.nonfinite_steps,
    })
    evaluate_deployed(ctx, task.index, full=last and cfg.eval.full_at_ends)
    save_run_checkpoint(ctx, Position(task.index + 1))


def finite_or_none(value: float, digits: int | None = None) -> float | None:
    """``value`` (rounded) if finite, else None: the event log is strict JSON."""
    if not math.isfinite(value):
        return None
    return round(value, digits) if digits is not None else value


def provenance(cfg: Config) -> dict[str, Any]:
    import open_clip

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
    if cfg.train.distributed != "none" or launched():  # under torchrun: every rank runs this (docs/scaling.md)
        from fif.distributed_run import run_on_ranks

        result = run_on_ranks(cfg, out_dir, overwrite, on_event, progress)
        if result is not None:
            return result
    out = Path(out_dir or cfg.run.out or default_out_dir(cfg))
    with StopSignals(out) as stop:
        lock = prepare_out_dir(out, overwrite)
        try:
            try:
                ctx = setup(cfg, out, on_event, progress)
                open_sinks(ctx)
            except BaseException:
                # Nothing was learned yet: leave no half-made run folder behind.
                shutil.rmtree(out, ignore_errors=True)
                raise
            ctx.stop = stop
            atomic_write_text(out / "config.yaml", dump_yaml(cfg))
            atomic_write_json(out / "run.json", {**provenance(cfg), "tasks": [list(t.concepts) for t in ctx.tasks]})
            return start_stream(ctx)
        finally:
            lock.release()


def resume(
    run_dir: str | Path,
    overrides: list[str] | None = None,
    on_event: Callable[[dict], None] | None = None,
    progress: bool = False,
) -> RunResult:
    """Continue an interrupted run from its newest valid checkpoint; on CPU the result is bit-identical
    to the uninterrupted run (``summary.json``, ``final.safetensors``, and ``events.jsonl`` up to the
    wall-clock fields of :data:`fif.resume.TIMING_KEYS`).

    Args:
        run_dir: the run folder.
        overrides: ``section.key=value`` changes to the run's config.yaml (see :func:`fif.resume.resume_config`).
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
    if launched():  # under torchrun with several processes: every rank resumes (the config must say ddp)
        from fif.distributed_run import resume_on_ranks

        return resume_on_ranks(run_dir, overrides, on_event, progress)
    with StopSignals(run_dir) as stop, RunLock(run_dir):
        rc = resume_config(run_dir, overrides)
        if is_finished(run_dir):
            raise RunFolderError(f"run {str(run_dir)!r} already finished (see its summary.json); nothing to resume")
        ckpt, skipped = latest_valid(run_dir / CHECKPOINT_DIR)
        for path, _ in skipped:
            quarantine(path)
        ctx = setup(rc.cfg, run_dir, on_event, progress)
        ctx.stop = stop
        if rc.changed:
            atomic_write_text(run_dir / "config.yaml", dump_yaml(rc.cfg))
        record_resume(run_dir, ckpt, rc.changed)
        for stale in ("summary.json", "final.safetensors"):
            (run_dir / stale).unlink(missing_ok=True)
        if ckpt is None:  # stopped before the first checkpoint: start over in the same folder
            log.warning(f"{run_dir}: no valid checkpoint; starting the run over")
            truncate_events(run_dir / "events.jsonl", 0, hashlib.sha256(b"").hexdigest())
            open_sinks(ctx)
            return start_stream(ctx)
        current = restore_run_state(ctx, ckpt, rollback=False)
        if on_event is not None:
            for event in read_events(run_dir / "events.jsonl"):
                on_event(event)
        open_sinks(ctx)
        return run_stream(ctx, ckpt.position, current)


def start_stream(ctx: RunContext) -> RunResult:
    """Log the run start, evaluate the zero-shot model, checkpoint, and run every task."""
    cfg = ctx.cfg
    ctx.emit({
        "event": "run_start", "tasks": len(ctx.tasks), "method": cfg.method.name,
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
    from fif.sinks import FanOut, build_sinks

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
    from fif.sinks import FanOut

    if isinstance(ctx.on_event, FanOut):
        ctx.on_event.close()


def finish(ctx: RunContext) -> RunResult:
    """Write the deployed weights and the summary."""
    if ctx.dist is not None and not ctx.dist.is_main:
        from fif.distributed_run import follower_finish

        return follower_finish(ctx)
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
