"""One task of a run: plan its steps, begin_task → train → end_task, evaluate, checkpoint.

:func:`run_task` runs a task of a set-up run (its :class:`~fif.runner.spec.RunSpec` and
:class:`~fif.runner.state.RunState`); the builders it uses (:func:`task_info`, :func:`task_pool`,
:func:`task_optimizer`, ...) are shared with the resume path (:func:`restore_run_state`), so a resumed task
is built exactly like a fresh one. The stream loop around it: :mod:`fif.runner.stream`.

Work that only rank 0 of a data-parallel run does is marked where it happens (``ranks.is_main``):
removing checkpoints (evaluation is shared out: every rank encodes its share); everything else runs on
every rank, through the collectives of
``spec.ranks`` (no-ops for :class:`~fif.train.distributed.Solo`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm.auto import tqdm

from fif.budget import Ledger, StepCost, hook_cost_mafs, mafs_per_step, paper_step_cost
from fif.config.components import schedule_from_config
from fif.core.io import CheckpointError
from fif.core.optim import OptimConfig, carry_optimizer_state
from fif.core.seeding import restore_rng, rng_for
from fif.data.bad_samples import BadSampleLog
from fif.data.batch import Batch
from fif.data.loader import StreamBatches
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
from fif.methods import HookCost, TaskInfo, deploy_model_for, freeze_all_but, optimizer_for
from fif.model.clip import Clip
from fif.runner import samples, sharding
from fif.runner.checkpoint import CHECKPOINT_DIR, Checkpoint, Position, latest_valid, remove_after
from fif.runner.folder import RunInterrupted, TrainingDivergedError
from fif.runner.spec import RunSpec
from fif.runner.state import GuardState, RunState, TaskRun, _Rollback, save_run_checkpoint
from fif.train.fsdp import ShardedModel
from fif.train.loop import STAT_RUN, TaskLog, fix_temperature_, to_device, train_task
from fif.train.schedules import task_curve

log = logging.getLogger(__name__)


def latest_weights(spec: RunSpec) -> dict[str, torch.Tensor]:
    """The method's deployed weights now, else the model's (what the temporal merger merges)."""
    own = spec.method.deploy_weights()
    return own if own is not None else spec.clip.model.state_dict()


def deployed_weights(spec: RunSpec) -> dict[str, torch.Tensor] | None:
    """What to evaluate and ship: the temporal merger's merge if it deploys one, else the method's own."""
    own = spec.method.deploy_weights()
    merged = spec.merger.deploy_weights(lambda: own if own is not None else spec.clip.model.state_dict())
    return merged if merged is not None else own


def deployed_clip(spec: RunSpec) -> Clip:
    """The CLIP to evaluate: the deployed weights (rank 0's, on every rank), else the model being trained.

    Only rank 0 holds the temporal merger's state (:class:`~fif.runner.merger.FollowerMerger` elsewhere),
    so the other ranks build the same architecture from their own weights and take rank 0's values.
    """
    ranks = spec.ranks
    weights = deployed_weights(spec)
    if not ranks.broadcast(weights is not None):
        return spec.clip
    if weights is None:  # a follower rank: rank 0's merge arrives below
        own = spec.method.deploy_weights()
        weights = own if own is not None else spec.clip.model.state_dict()
    model = deploy_model_for(spec.method, spec.clip.model, weights)  # a copy; the base architecture for adapters
    ranks.broadcast_module_(model)
    return Clip(model, spec.clip.tokenizer, spec.clip.arch, spec.clip.image_size, spec.clip.mean, spec.clip.std)


def evaluate_deployed(spec: RunSpec, task: int, full: bool) -> dict[str, float]:
    """Evaluate the method's deployed weights and log an ``eval`` event (rank 0); returns per-dataset scores.

    Every rank of a data-parallel run evaluates its share of each dataset (:meth:`Evaluator.run` with the
    run's ranks) and gets the scores.
    """
    clip = deployed_clip(spec)
    t0 = time.perf_counter()
    scores = spec.evaluator.run(clip, spec.device, subset=not full, precision=eval_precision(spec), ranks=spec.ranks)
    spec.emit({
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


def eval_precision(spec: RunSpec) -> str:
    """``eval.precision``, where ``auto`` means the training precision."""
    return spec.precision if spec.cfg.eval.precision == "auto" else spec.cfg.eval.precision


def evaluate_in_task(spec: RunSpec, task: int, step: int) -> float:
    """Evaluate the weights being trained, mid-task, on the stream subsets (``eval.every_steps``).

    Logs an ``eval_step`` event (it never counts as the task's point in the summary) and returns the
    seconds it took, which the caller keeps out of the task's training time.
    """
    t0 = time.perf_counter()
    scores = spec.evaluator.run(spec.clip, spec.device, subset=True, precision=eval_precision(spec), ranks=spec.ranks)
    seconds = time.perf_counter() - t0
    spec.emit({
        "event": "eval_step", "task": task, "step": step, "full": False, "seconds": round(seconds, 3),
        "scores": {s.dataset: round(s.score, 4) for s in scores}, "roles": {s.dataset: s.role for s in scores},
    })
    return seconds


class StepEvals:
    """``eval.every_steps``: the ``on_step`` hook that evaluates inside a task (``hook`` is None when off;
    every rank evaluates its share).

    Evaluates every N steps except the task's last, which the end-of-task evaluation covers, and adds up
    the seconds so the task's training time excludes them.
    """

    def __init__(self, spec: RunSpec, task: int, steps: int):
        self.spec, self.task, self.steps = spec, task, steps
        self.every = spec.cfg.eval.every_steps
        self.seconds = 0.0
        self.hook = self._on_step if self.every > 0 else None

    def _on_step(self, tlog: Any) -> None:
        if tlog.steps % self.every == 0 and tlog.steps < self.steps:
            self.seconds += evaluate_in_task(self.spec, self.task, tlog.steps)


def task_pool(spec: RunSpec, task: Task) -> Pool:
    """The training samples of a task's concepts (after the task, they join the buffer)."""
    return Pool([(spec.benchmark.load(d, "train"), idx) for d, idx in task_indices(task, spec.benchmark).items()])


def buffer_pool(spec: RunSpec, task: Task) -> Pool | None:
    """The buffer of ``task``: the training samples of every earlier task (None before the second task).

    A pure function of the stream, so a run holds no buffer state and a resumed run has the same one.
    """
    segments = [seg for earlier in spec.tasks[: task.index] for seg in task_pool(spec, earlier).segments]
    return Pool(segments) if segments else None


@dataclass(frozen=True)
class RunTaskData:
    """The :class:`~fif.methods.TaskData` of one task of a run.

    ``batches(batch_size)``: one pass over the task's own training data on the device, seeded apart from
    the training batches (purpose ``"task-hook"``), each sample labelled with its concept (EWC's Fisher
    pass, GDumb's memory). ``reference_texts(n)``: n pretraining-pool captions drawn with the run seed
    (ZSCL's reference set); none without a pool.
    """

    pool: Pool
    concepts: list[str]
    task_index: int
    clip: Clip
    device: torch.device
    seed: int
    pretraining_pool: Pool | None

    def batches(self, batch_size: int) -> Iterator[Batch]:
        clip, labels = self.clip, concept_labels(self.pool, self.concepts)
        for batch in pool_batches(
            self.pool, batch_size, clip.tokenize, clip.normalize, clip.image_size, self.seed,
            ("task-hook", self.task_index), labels,
        ):
            yield to_device(batch, self.device)

    def reference_texts(self, n: int) -> list[str]:
        if self.pretraining_pool is None:
            return []
        return pool_captions(self.pretraining_pool, n, rng_for(self.seed, "reference-texts"))


def task_info(spec: RunSpec, task: Task, steps: int) -> TaskInfo:
    """What the method sees of a task: its place in the stream, steps, size, the run seed and its data
    (:class:`RunTaskData`)."""
    pool, seed = task_pool(spec, task), spec.cfg.run.seed
    data = RunTaskData(pool, list(task.concepts), task.index, spec.clip, spec.device, seed, spec.pretraining_pool)
    return TaskInfo(task.index, len(spec.tasks), list(task.concepts), steps, num_samples=len(pool), seed=seed, data=data)


def task_batches(spec: RunSpec, task: Task, steps: int) -> MixedBatches:
    """The task's mixed batches (update = its concepts, buffer = all earlier tasks, pool = pretraining)."""
    cfg = spec.cfg
    update = task_pool(spec, task)
    buffer = buffer_pool(spec, task)
    if buffer is not None and cfg.data.mixture.buffer_cap:

        buffer = buffer.subsample(cfg.data.mixture.buffer_cap, rng_for(cfg.run.seed, "buffer-cap", task.index))
    m = cfg.data.mixture
    counts = batch_counts(cfg.train.batch_size, m.pretraining, m.update, m.buffer, buffer_empty=buffer is None)
    sampler = MixtureSampler(counts, update, buffer, spec.pretraining_pool, seed=cfg.run.seed, task=task.index)
    return MixedBatches(sampler, spec.clip.tokenize, spec.clip.normalize, spec.clip.image_size, steps)


def stream_batches(spec: RunSpec, first: int) -> StreamBatches:
    """The training batches of task ``first`` and of every later task (this rank's rows), as one dataset for
    the run's workers: they copy what they serve when they start, so every remaining task is planned now,
    exactly as :func:`task_batches` plans it when the task comes (its buffer is the earlier tasks' data)."""
    return StreamBatches({t.index: spec.ranks.shard(task_batches(spec, t, 0)) for t in spec.tasks[first:]})


def batch_iterator(spec: RunSpec, task: Task, batches: MixedBatches, start: int) -> Iterator[Batch]:
    """Batches ``start..`` of the task in order (this rank's rows): prefetched by the run's workers when
    ``data.num_workers`` > 0 (started at the first task that needs them, then kept), else built here."""
    feed = spec.feed
    if feed is None or feed.num_workers <= 0:
        rows = spec.ranks.shard(batches)
        return (rows[i] for i in range(start, len(batches)))
    if not isinstance(feed.dataset, StreamBatches) or task.index not in feed.dataset.per_task:  # or rolled back before
        feed.start(stream_batches(spec, task.index))
    return feed.iterate((task.index, step) for step in range(start, len(batches)))


def close_workers(spec: RunSpec) -> None:
    """Stop the run's data workers (training batches and evaluation); a later task or evaluation restarts them."""
    if spec.feed is not None:
        spec.feed.close()
    spec.evaluator.close()


def task_step_and_hook_mafs(step: StepCost, reference: StepCost, hook: HookCost) -> tuple[float, float]:
    """MAFs of one step and of the task's hooks, in the accounting the step was measured in.

    ``exact``: the hook once per task. ``paper`` (FiF Tab. 4): the hook's pass is added to every step
    (:func:`~fif.budget.paper_step_cost`), and nothing is charged once. The accounting travels with the
    measured step (a resumed run keeps the one it was planned in).
    """
    if step.accounting == "paper":
        return mafs_per_step(paper_step_cost(step, hook), reference), 0.0
    return mafs_per_step(step, reference), hook_cost_mafs(hook, reference)


def start_task(spec: RunSpec, state: RunState, task: Task) -> TaskRun:
    """Plan the task's steps, announce it, run ``begin_task``, load its start weights, build its optimizer."""
    method = spec.method
    info = task_info(spec, task, steps=0)
    step_mafs, hook_mafs = task_step_and_hook_mafs(state.step_cost, state.reference_cost, method.extra_cost(info))
    info.steps = state.ledger.plan(task.index, step_mafs, hook_mafs)
    # every rank takes rank 0's steps (a hook's measured cost may differ per GPU)
    info.steps = spec.ranks.broadcast(info.steps)
    spec.emit({"event": "task_start", "task": task.index, "concepts": len(task.concepts), "steps": info.steps})

    method.begin_task(info)
    state.ledger.charge(task.index, hook_mafs=hook_mafs)
    start_weights = method.training_weights()
    if start_weights is not None:
        spec.clip.model.load_state_dict(start_weights)
    merged_start = spec.merger.training_weights()  # merge.init: θ0, the running merge, ... (None = as is)
    if merged_start is not None:
        spec.clip.model.load_state_dict(merged_start)
    task_optimizer(spec, state)
    return TaskRun(info, TaskLog())


def task_optimizer(
    spec: RunSpec, state: RunState, saved: dict | None = None, shards: Path | None = None
) -> torch.optim.Optimizer:
    """Build the task's optimizer (after fixing the temperature, which takes logit_scale out of it) and
    make it ``state.optimizer``. Under ``train.distributed=fsdp`` it steps a sharded copy of the model
    made now (``state.sharded``).

    With ``saved`` (a checkpoint's optimizer state) it is loaded, or with ``shards`` (the folder of a
    sharded run's mid-task checkpoint) its optimizer shards; else ``train.optimizer_reset=false``
    carries the last task's moments over.

    Returns:
        The new optimizer.
    """
    t = spec.cfg.train
    if t.temperature == "fixed":  # after the start weights, which may hold another logit_scale
        fix_temperature_(spec.clip.model, t.fixed_logit_scale)
    named, optim_cfg = spec.method.trainable_parameters(), OptimConfig(
        t.weight_decay, (t.beta1, t.beta2), t.eps, t.optimizer, t.optimizer_impl
    )
    state.sharded = None
    if sharding.sharded(spec):  # the same names, the copy's (sharded) parameters
        trainable = {n for n, p in named if p.requires_grad}
        state.sharded = sharding.shard_for_task(spec, trainable)
        named = [(n, p) for n, p in state.sharded.named_parameters() if n in trainable]
    optimizer = optimizer_for(spec.method, named, t.lr, optim_cfg)  # the method's own (GaLore), else fif's
    if shards is not None:
        sharding.read_shards(shards, state.sharded, optimizer)
    elif saved is not None:
        optimizer.load_state_dict(saved)
    elif not t.optimizer_reset:
        carry_optimizer_state(state.optimizer, optimizer)
    state.optimizer = optimizer
    return optimizer


def run_task(spec: RunSpec, state: RunState, task: Task, current: TaskRun | None = None) -> None:
    """One task: budget → begin_task → train → end_task → evaluate → checkpoint.

    ``current`` continues a task restored from a mid-task checkpoint (its steps so far are kept).

    Raises:
        _Rollback: ``guard.max_bad_steps`` consecutive non-finite steps (the caller rolls back).
        RunInterrupted: SIGINT/SIGTERM (a checkpoint of the current step was written first).
    """
    cfg, method, ranks = spec.cfg, spec.method, spec.ranks
    current = current or start_task(spec, state, task)
    info, steps = current.info, current.info.steps
    batches = task_batches(spec, task, steps)
    tlog, eval_seconds = train_steps(spec, state, task, current, batches)
    if tlog.rollback:
        raise _Rollback(task.index, tlog.steps, tlog.diverged)
    if ranks.agree(spec.stop is not None and spec.stop.requested):  # signalled after the last step's check
        path = save_run_checkpoint(spec, state, Position(task.index, True, tlog.steps), tlog)
        raise RunInterrupted(spec.stop.signum, spec.out_dir, path)
    sharding.publish_weights(spec, state.sharded)  # fsdp: the task's weights, whole, into the run's model
    state.sharded = None
    method.end_task(info)
    spec.merger.end_task(task.index, lambda: latest_weights(spec))
    state.ledger.charge(task.index, steps=tlog.steps)
    spent = state.ledger.tasks[task.index]
    spec.emit({
        "event": "task_end", "task": task.index, "concepts": len(task.concepts), "steps": steps,
        "train_seconds": round(max(tlog.seconds - eval_seconds, 0.0), 3),
        "spent_mafs": spent.spent_mafs,
        "budget_mafs": spent.budget_mafs, "budget_total_mafs": state.ledger.total_budget_mafs,
        "final_loss": finite_or_none(tlog.losses[-1][1]) if tlog.losses else None,
        "skipped_steps": tlog.nonfinite_steps,
    })
    last = task.index == len(spec.tasks) - 1
    evaluate_deployed(spec, task.index, full=last and cfg.eval.full_at_ends)
    samples.collect(spec, state, task.index)  # what evaluation and the task's hooks met (unreadable images replaced)
    save_run_checkpoint(spec, state, Position(task.index + 1))


def train_steps(
    spec: RunSpec, state: RunState, task: Task, current: TaskRun, batches: MixedBatches
) -> tuple[TaskLog, float]:
    """The task's optimizer steps from ``current.log.steps`` on (:func:`fif.train.loop.train_task`), with
    what happens between steps: the online EMA, ``eval.every_steps``, checkpoints and stop signals.

    Returns:
        The task's loop log and the seconds spent evaluating inside the task.

    Raises:
        RunInterrupted: SIGINT/SIGTERM during the steps (a checkpoint of the current step was written first).
    """
    cfg, ranks, steps = spec.cfg, spec.ranks, current.info.steps
    lr_curve = task_curve(schedule_from_config(cfg.train), task.index, steps, len(spec.tasks))
    bar = None
    if spec.progress:

        bar = tqdm(total=steps, initial=current.log.steps, desc=f"task {task.index + 1}/{len(spec.tasks)}", leave=False, unit="step")
    step_evals = StepEvals(spec, task.index, steps)
    merge_step = spec.merger.step_hook(spec.clip.model)  # online EMA: device ops only, or None

    def on_log(step: int, loss: float) -> None:
        skips = current.log.skips
        extra = {"skipped": skips[-1][1]} if skips and skips[-1][0] == step else {}
        spec.emit({"event": "train", "task": task.index, "step": step, "loss": finite_or_none(loss, 6), **extra})
        if bar is not None:
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}")

    def on_step(log: TaskLog) -> None:  # Python only; acts (and syncs) at eval/checkpoint steps or on a signal
        if merge_step is not None:  # first: a checkpoint of this step holds the EMA after it
            merge_step()
        if step_evals.hook is not None:  # before the checkpoint, so a resume from this step keeps its eval
            if log.steps % step_evals.every == 0:
                sharding.publish_weights(spec, state.sharded)  # fsdp: evaluate the weights of this step
            step_evals.hook(log)
        every = cfg.checkpoint.every_steps
        # ranks stop at the same step: they agree at logging steps (a sync point anyway); one process at once
        logged = log.steps % cfg.train.log_every == 0 or log.steps == steps
        stop = ranks.agree_at(spec.stop is not None and spec.stop.requested, sync_point=logged)
        if stop or (every and log.steps % every == 0 and log.steps < steps):
            path = save_run_checkpoint(spec, state, Position(task.index, True, log.steps), log)
            if stop:
                raise RunInterrupted(spec.stop.signum, spec.out_dir, path)

    if spec.stop is not None:
        spec.stop.deferred = True  # a signal now stops after the current step, with a checkpoint
    # DDP over this rank's rows of each global batch (built now: it broadcasts rank 0's weights); as is in one
    # process; under fsdp the task's sharded copy
    model = ShardedModel(state.sharded) if state.sharded is not None else ranks.wrap(spec.clip.model)
    try:
        tlog = train_task(
            model, spec.method, state.optimizer,
            samples.watch(spec, state, batch_iterator(spec, task, batches, current.log.steps), task.index),
            lambda s: float(lr_curve[s]) * state.guard.lr_scale, steps, spec.device, spec.precision,
            cfg.train.grad_clip, cfg.train.log_every, on_log=on_log, grad_accum_steps=cfg.train.grad_accum_steps,
            log=current.log, on_step=on_step, max_bad_steps=cfg.guard.max_bad_steps,
        )
    finally:
        if spec.stop is not None:
            spec.stop.deferred = False
        if bar is not None:
            bar.close()
    return tlog, step_evals.seconds


def finite_or_none(value: float, digits: int | None = None) -> float | None:
    """``value`` (rounded) if finite, else None: the event log is strict JSON."""
    if not math.isfinite(value):
        return None
    return round(value, digits) if digits is not None else value


def restore_run_state(
    spec: RunSpec, ckpt: Checkpoint, kept_guard: GuardState | None = None
) -> tuple[RunState, TaskRun | None]:
    """Put a freshly set-up run's components into the state of ``ckpt``.

    Args:
        spec: the run (its model, method and temporal merger are loaded from the checkpoint).
        ckpt: a verified checkpoint of this run.
        kept_guard: a rollback's guard state (the lr stays reduced, the non-finite counters of the task's
            log start afresh); None on resume, which takes the checkpoint's.

    Returns:
        The run's state at the checkpoint, and the task in progress, if any.

    Raises:
        CheckpointError: the checkpoint was made for another number of tasks or another model.
    """
    saved, pos = ckpt.state, ckpt.position
    if pos.task > len(spec.tasks) or len(saved["ledger"]["tasks"]) != max(len(spec.tasks), 1):
        raise CheckpointError(
            f"{ckpt.path}: made for a run of {len(saved['ledger']['tasks'])} tasks, this config has {len(spec.tasks)}"
        )
    spec.method.load_state_dict(saved["method"])  # first: a method may rebuild modules (adapters) here
    if "merge" in saved:  # checkpoints from before temporal merging have none (and merged nothing)
        spec.merger.load_state_dict(saved["merge"])
    try:
        spec.clip.model.load_state_dict(ckpt.weights)
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt.path}: the weights do not fit model {spec.cfg.model.arch!r} ({e})") from e
    freeze_all_but(spec.clip.model, spec.method.trainable_parameters())
    state = RunState(
        Ledger.from_dict(saved["ledger"]), StepCost.from_dict(saved["costs"]["step"]),
        StepCost.from_dict(saved["costs"]["reference"]),
        guard=kept_guard if kept_guard is not None else GuardState(**saved["guard"]),
        bad_samples=BadSampleLog(spec.cfg.data.max_bad_samples, {k: list(v) for k, v in saved.get("bad_samples", {}).items()}),
    )
    current = None
    if pos.started:
        task = spec.tasks[pos.task]
        info = task_info(spec, task, steps=state.ledger.tasks[pos.task].steps)
        task_log = TaskLog.from_state_dict(saved["task_log"])
        if kept_guard is not None:  # a rollback: a fresh start for the non-finite counters
            task_log.stats[STAT_RUN:] = 0
        task_optimizer(spec, state, saved["optimizer"], ckpt.path if sharding.sharded(spec) else None)
        current = TaskRun(info, task_log)
    elif saved["optimizer"] is not None:  # carried into the next task (train.optimizer_reset=false)
        task_optimizer(spec, state, saved["optimizer"])
    restore_rng(saved["rng"])  # last: nothing after it may draw
    return state, current


def roll_back(
    spec: RunSpec, state: RunState, task: int, step: int, reason: str = "steps"
) -> tuple[Position, RunState, TaskRun | None]:
    """Return to the newest valid checkpoint with the learning rate scaled by ``guard.lr_factor``.

    ``reason`` is the :class:`~fif.runner.state._Rollback`'s: ``"steps"`` or ``"weights"``.

    Returns:
        The checkpoint's position, the run's state there (with the guard's new lr scale and rollback count)
        and the task in progress, if any.

    Raises:
        TrainingDivergedError: ``guard.max_rollbacks`` are used up, or no checkpoint verifies.
    """
    g, guard = spec.cfg.guard, state.guard
    what = (f"task {task}: non-finite weights or optimizer state by step {step}" if reason == "weights" else
            f"task {task}: {g.max_bad_steps} consecutive non-finite steps (loss or gradient), or every step of "
            f"the task, by step {step}")
    if guard.rollbacks >= g.max_rollbacks:
        raise TrainingDivergedError(
            f"{what}, after {guard.rollbacks} rollbacks (lr x{guard.lr_scale:g}). Lower train.lr, check the "
            f"task's data, or raise guard.max_rollbacks; continue with: fif run --resume {spec.out_dir} train.lr=..."
        )
    ckpt, _ = latest_valid(spec.out_dir / CHECKPOINT_DIR)
    if ckpt is None:
        raise TrainingDivergedError(f"{what}, and no checkpoint verifies to roll back to")
    guard = GuardState(guard.lr_scale * g.lr_factor, guard.rollbacks + 1)
    spec.ranks.barrier()  # every rank has read the checkpoint before rank 0 removes the newer ones
    if spec.ranks.is_main:  # rank 0 alone writes the run folder
        remove_after(spec.out_dir / CHECKPOINT_DIR, ckpt.position)
    met = state.bad_samples  # unreadable images met after the checkpoint stay counted (their events stay too)
    state, current = restore_run_state(spec, ckpt, kept_guard=guard)
    state.bad_samples = met
    spec.emit({
        "event": "rollback", "task": task, "step": step, "to_task": ckpt.position.task,
        "to_step": ckpt.position.step, "lr_scale": guard.lr_scale, "rollbacks": guard.rollbacks, "reason": reason,
    })
    log.warning(f"{what}; rolled back to {ckpt.path.name} with lr x{guard.lr_scale:g}")
    return ckpt.position, state, current
