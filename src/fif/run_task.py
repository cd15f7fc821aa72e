"""One task of a run: plan its steps, begin_task → train → end_task, evaluate, checkpoint.

:func:`run_task` runs a task of a set-up :class:`~fif.run_setup.RunContext`; the builders it uses
(:func:`task_info`, :func:`task_pool`, :func:`task_optimizer`, ...) are shared with the resume path
(:mod:`fif.runstate`), so a resumed task is built exactly like a fresh one. The stream loop around it:
:mod:`fif.runner`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from fif.budget import hook_cost_mafs, mafs_per_step
from fif.checkpoint import Position
from fif.data.mixture import MixedBatches, MixtureSampler, Pool, batch_counts
from fif.data.stream import Task, task_indices
from fif.methods import TaskInfo
from fif.model.clip import Clip
from fif.resume import RunInterrupted
from fif.run_setup import RunContext
from fif.runstate import TaskRun, save_run_checkpoint
from fif.schedules import schedule_from_config, task_curve
from fif.train import (
    OptimConfig,
    build_optimizer,
    carry_optimizer_state,
    fix_temperature_,
    TaskLog,
    train_task,
)


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
