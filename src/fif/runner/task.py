"""One task of a run: plan its steps, begin_task → train → end_task, evaluate, checkpoint.

:func:`run_task` runs a task of a set-up :class:`~fif.runner.setup.RunContext`; the builders it uses
(:func:`task_info`, :func:`task_pool`, :func:`task_optimizer`, ...) are shared with the resume path
(:mod:`fif.runner.state`), so a resumed task is built exactly like a fresh one. The stream loop around it:
:mod:`fif.runner.stream`.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from fif.budget import Ledger, StepCost, hook_cost_mafs, mafs_per_step
from fif.config.components import schedule_from_config
from fif.core.io import CheckpointError
from fif.core.optim import OptimConfig, build_optimizer, carry_optimizer_state
from fif.core.seeding import restore_rng, rng_for
from fif.data.mixture import (
    MixedBatches,
    MixtureSampler,
    Pool,
    batch_counts,
    concept_labels,
    pool_batches,
    pool_captions,
)
from fif.data.stream import Task, task_indices
from fif.methods import TaskInfo, freeze_all_but
from fif.model.clip import Clip
from fif.runner.checkpoint import CHECKPOINT_DIR, Checkpoint, Position, latest_valid, remove_after
from fif.runner.folder import RunInterrupted, TrainingDivergedError
from fif.runner.setup import RunContext
from fif.runner.state import GuardState, TaskRun, save_run_checkpoint, truncate_events
from fif.train.loop import STAT_RUN, TaskLog, fix_temperature_, to_device, train_task
from fif.train.schedules import task_curve

log = logging.getLogger(__name__)


class _Rollback(Exception):
    """Raised out of a task when ``guard.max_bad_steps`` consecutive steps were non-finite."""

    def __init__(self, task: int, step: int):
        super().__init__(f"task {task} step {step}")
        self.task, self.step = task, step


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
