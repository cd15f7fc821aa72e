"""One task's update loop: mixed batches → loss → backward → clip → step, nothing else in the way.

The loop is flat on purpose (nanoGPT style): every line of an optimizer step is visible in
:func:`train_task`. The only host syncs are at logging intervals and are marked ``# sync`` (plus, for
unfused optimizers, the per-step non-finite check of :func:`guarded_step_`, free on CPU).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from fif.core.device import autocast_context
from fif.core.finite import all_finite, checked_tensors, optimizer_tensors
from fif.data.batch import Batch
from fif.methods.base import LossOutput, UpdateMethod
from fif.model.checkpointing import enable_grad_checkpointing  # noqa: F401 (public here too: the loop's memory trick)
from fif.model.clip import clamp_logit_scale_

log = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """Training produced non-finite weights or kept producing non-finite steps after the allowed
    rollbacks; nothing diverged was written (the message says what to try)."""


@dataclass
class TaskLog:
    """What one task's loop reports, and its state between steps (checkpointed for exact resume).

    ``stats`` is the current logging interval, kept on the device so the loop never syncs for it:
    [sum of finite losses, finite steps, skipped steps, current run of consecutive skipped steps,
    longest run] (see ``STAT_*``).
    """

    steps: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean finite loss since last log)
    seconds: float = 0.0
    nonfinite_steps: int = 0  # steps skipped for a non-finite loss or gradient (counted at log intervals)
    skips: list[tuple[int, int]] = field(default_factory=list)  # (step, steps skipped in the interval ending there)
    rollback: bool = False  # the caller should roll back (why: ``diverged``)
    diverged: str = ""  # "steps": ``max_bad_steps`` consecutive skipped steps; "weights": non-finite weights/state
    stats: torch.Tensor | None = None

    def state_dict(self) -> dict:
        """Plain data for a checkpoint (timing left out)."""
        return {"steps": self.steps, "losses": [list(x) for x in self.losses], "nonfinite_steps": self.nonfinite_steps,
                "skips": [list(x) for x in self.skips], "stats": self.stats}

    @classmethod
    def from_state_dict(cls, state: dict) -> "TaskLog":
        return cls(state["steps"], [tuple(x) for x in state["losses"]], 0.0, state["nonfinite_steps"],
                   [tuple(x) for x in state["skips"]], False, "", state["stats"])


STAT_LOSS, STAT_FINITE, STAT_SKIPPED, STAT_RUN, STAT_LONGEST = range(5)


def fix_temperature_(model: nn.Module, logit_scale: float | None = None) -> None:
    """Freeze open_clip's log-temperature; optionally set the multiplier exp(s) to ``logit_scale`` first.

    Raises:
        ValueError: the model has no ``logit_scale`` parameter, or ``logit_scale`` is not in (0, 100].
    """
    scale = getattr(model, "logit_scale", None)
    if not isinstance(scale, nn.Parameter):
        raise ValueError(f"{type(model).__name__} has no logit_scale parameter; use train.temperature=learnable")
    if logit_scale is not None:
        if not 0 < logit_scale <= 100:
            raise ValueError(f"fixed logit scale {logit_scale} must be in (0, 100] (the multiplier exp(s))")
        with torch.no_grad():
            scale.fill_(math.log(logit_scale))
    scale.requires_grad_(False)


def batchnorm_accumulation_warning(model: nn.Module, grad_accum_steps: int) -> str | None:
    """The warning to log when micro-batching a model whose BatchNorm layers use batch statistics, else None.

    :func:`accumulated_backward` is exact for LayerNorm models (ViTs), but BatchNorm normalises each
    micro-batch with its own statistics; on a random-init ``fif-mini-rn32`` at batch 128 the gradient is
    20-50% (relative L2) away from the whole batch's (``benchmarks/bench_grad_accum.py``).
    """
    if grad_accum_steps <= 1:
        return None
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return None
    return (
        f"train.grad_accum_steps={grad_accum_steps} on a model with {len(norms)} BatchNorm layers ({norms[0]}, ...): "
        f"they normalise each micro-batch with its own statistics, so the update is not the whole batch's; "
        f"use train.grad_accum_steps=1 where memory allows (exact for LayerNorm models such as ViTs)"
    )


def to_device(batch: Batch, device: torch.device) -> Batch:
    if batch.images.device == device:
        return batch
    return Batch(
        images=batch.images.to(device, non_blocking=True),
        tokens=batch.tokens.to(device, non_blocking=True),
        source=batch.source.to(device, non_blocking=True),
        labels=None if batch.labels is None else batch.labels.to(device, non_blocking=True),
    )


def device_ahead(batches: Iterable[Batch], device: torch.device) -> Iterator[Batch]:
    """The batches on ``device``; on CUDA batch k+1 is copied on a side stream while step k runs.

    The copy of the next batch is issued (non-blocking, from pinned memory where the loader pins) as soon
    as the current one is handed out, so it overlaps the step's kernels instead of queueing behind them;
    the compute stream waits for it only when it uses it, and ``record_stream`` keeps the allocator from
    reusing the copy's memory early. Elsewhere (CPU) a plain :func:`to_device`.
    """
    if device.type != "cuda":
        yield from (to_device(b, device) for b in batches)
        return
    side, compute = torch.cuda.Stream(device), torch.cuda.current_stream(device)

    def issue(batch: Batch | None) -> Batch | None:
        if batch is None:
            return None
        with torch.cuda.stream(side):
            return to_device(batch, device)

    source = iter(batches)
    ahead = issue(next(source, None))
    while ahead is not None:
        compute.wait_stream(side)
        current = ahead
        for t in (current.images, current.tokens, current.source, current.labels):
            if t is not None and t.device.type == "cuda":
                t.record_stream(compute)
        ahead = issue(next(source, None))
        yield current


FEATURE_KEYS = ("image_features", "text_features")


class _CachedForward:
    """Stands in for the model inside ``method.loss`` during accumulation: calling it on the step's batch
    returns the cached features as leaves that collect dL/dfeatures, and a live ``exp(logit_scale)`` (and
    ``logit_bias``) so the temperature gets its gradient exactly once. Everything else (parameters for
    penalty terms, ``encode_*``) is the real model's.
    """

    def __init__(self, model: nn.Module, batch: Batch, features: dict[str, torch.Tensor]):
        self._model, self._batch, self._features = model, batch, features

    def __call__(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        if images is not self._batch.images or tokens is not self._batch.tokens:
            raise ValueError(
                "train.grad_accum_steps > 1 needs a method whose loss calls the model on the step's whole batch; "
                "this method called it on other inputs. Use train.grad_accum_steps=1 for it."
            )
        out = dict(self._features)
        out["logit_scale"] = self._model.logit_scale.exp()
        if getattr(self._model, "logit_bias", None) is not None:
            out["logit_bias"] = self._model.logit_bias
        return out

    def __getattr__(self, name: str):
        return getattr(self._model, name)


def accumulated_backward(
    method: UpdateMethod,
    model: nn.Module,
    batch: Batch,
    parts: int,
    scaler: torch.amp.GradScaler,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> LossOutput:
    """Backpropagate ``method.loss`` over the whole batch while running the towers in ``parts`` micro-batches.

    The CLIP loss is batch-global (every image against every text), so summing per-micro-batch losses
    would be a different objective. This computes the whole-batch gradient exactly (GradCache, Gao et
    al. 2021; open_clip's ``accum_freq``):

    1. features of every micro-batch without a graph (BatchNorm running stats restored afterwards, so
       each sample updates them once);
    2. ``method.loss`` on the whole batch with those features as leaves: one backward gives
       dL/dfeatures and the gradient of every term that reads parameters directly (logit_scale, penalties);
    3. each micro-batch re-run with grad and backpropagated with its slice of dL/dfeatures.

    Exact up to float rounding for models without batch statistics (ViTs); BatchNorm layers (open_clip's
    ModifiedResNet) normalise per micro-batch, as in any accumulation scheme. Stochastic layers (dropout,
    patch dropout; off in CLIP's configs) would draw differently in passes 1 and 3.

    Returns:
        The whole-batch :class:`LossOutput` (its value, not a per-micro-batch mean).
    """
    micro = batch.split(parts)
    saved = [b.clone() for b in model.buffers()]
    with torch.no_grad(), autocast():
        outs = [model(mb.images, mb.tokens) for mb in micro]
    with torch.no_grad():
        for b, v in zip(model.buffers(), saved):
            b.copy_(v)
    features = {k: torch.cat([o[k] for o in outs]).requires_grad_() for k in FEATURE_KEYS}
    with autocast():
        out = method.loss(batch, _CachedForward(model, batch, features))
    scaler.scale(out.total).backward()  # the scale rides along in dL/dfeatures
    start = 0
    for mb in micro:
        rows = slice(start, start + len(mb))
        start += len(mb)
        with autocast():
            live = model(mb.images, mb.tokens)
        pairs = [(live[k], features[k].grad[rows]) for k in FEATURE_KEYS if features[k].grad is not None]
        pairs = [(f, g.to(f.dtype)) for f, g in pairs if f.requires_grad]
        if pairs:
            torch.autograd.backward([f for f, _ in pairs], [g for _, g in pairs])
    return out


def clip_grads_(params: list[nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """The global L2 norm of the gradients (before clipping), as a device tensor; clips to ``max_norm`` unless None."""
    if max_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
    # FSDP's sharded gradients give a DTensor norm: made whole (a collective, no host sync), the same on every rank
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def guarded_step_(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, bad: torch.Tensor) -> None:
    """``optimizer.step()`` unless ``bad`` (a bool device tensor): a skipped step changes no weight or moment.

    - fp16: the GradScaler already skips steps with non-finite gradients (a NaN loss gives NaN gradients).
    - fused optimizers (``train.optimizer_impl=fused``, the default on CUDA): ``found_inf`` makes the kernel
      skip the update and undo its step count on the device — no host sync.
    - otherwise one host read per step (free on CPU, where nothing runs ahead of the host).
    """
    if scaler.is_enabled():
        scaler.step(optimizer)
        scaler.update()
    elif optimizer.defaults.get("fused"):
        optimizer.found_inf = bad.float()  # type: ignore[attr-defined]
        optimizer.step()
        optimizer.found_inf = None  # type: ignore[attr-defined]
    elif not bool(bad):  # sync: per step, only for unfused optimizers (free on CPU)
        optimizer.step()


def _record_step_(stats: torch.Tensor, loss: torch.Tensor, bad: torch.Tensor) -> None:
    """Add one step to the interval ``stats`` on the device (see :class:`TaskLog`)."""
    badf = bad.to(stats.dtype)
    run = (stats[STAT_RUN] + 1) * badf
    stats[STAT_LOSS:STAT_SKIPPED + 1] += torch.stack([torch.where(bad, 0.0, loss.float()), 1 - badf, badf])
    stats[STAT_RUN] = run
    stats[STAT_LONGEST] = torch.maximum(stats[STAT_LONGEST], run)


def train_task(
    model: nn.Module,
    method: UpdateMethod,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    lr_at: Callable[[int], float],
    steps: int,
    device: torch.device,
    precision: str = "fp32",
    grad_clip: float | None = 1.0,
    log_every: int = 50,
    start_step: int = 0,
    on_log: Callable[[int, float], None] | None = None,
    grad_accum_steps: int = 1,
    log: TaskLog | None = None,
    on_step: Callable[[TaskLog], None] | None = None,
    max_bad_steps: int = 0,
) -> TaskLog:
    """Run optimizer steps ``start_step .. steps-1`` of one task.

    Args:
        model: the open_clip model being trained (train mode is set here).
        method: provides ``loss`` and ``after_step``.
        optimizer: over ``method.trainable_parameters()``.
        batches: yields the batch of each step in order, starting at ``start_step``.
        lr_at: learning rate of a step (a pure schedule function).
        steps: total steps of the task (from the budget).
        device / precision: where and in which autocast precision to run.
        grad_clip: global grad-norm clip (None = off).
        log_every: steps between loss logs (the only host syncs).
        on_log: called with (step, mean loss of the interval) at each log.
        grad_accum_steps: micro-batches per step; same gradient as the whole batch (see
            :func:`accumulated_backward`).
        log: the task's log so far, to continue it (resume, rollback); its ``steps`` overrides ``start_step``.
        on_step: called with the log after every step (e.g. to checkpoint); it must not sync the device
            unless it acts.
        max_bad_steps: stop with ``log.rollback`` set once this many consecutive steps (or every step of a
            shorter task) were skipped for a non-finite loss or gradient (seen at the next log interval);
            0 = only skip them. Non-finite weights, buffers or optimizer state (checked at every log
            interval) always stop the loop with ``log.rollback`` set (``log.diverged == "weights"``).

    Returns:
        A :class:`TaskLog`.
    """

    model.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    amp = functools.partial(autocast_context, device, precision)
    result = log if log is not None else TaskLog(steps=start_step)
    start_step = result.steps
    result.rollback, result.diverged = False, ""
    if result.stats is None:
        result.stats = torch.zeros(5)
    result.stats = result.stats.to(device)
    t0 = time.perf_counter()
    for step, batch in zip(range(start_step, steps), device_ahead(batches, device)):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        if grad_accum_steps == 1:
            with autocast_context(device, precision):
                out = method.loss(batch, model)
            scaler.scale(out.total).backward()
        else:  # whole-batch loss, towers run per micro-batch
            out = accumulated_backward(method, model, batch, grad_accum_steps, scaler, amp)
        scaler.unscale_(optimizer)  # no-op unless fp16
        grad_norm = clip_grads_(params, grad_clip)
        loss = out.total.detach()
        bad = ~torch.isfinite(loss) if scaler.is_enabled() else ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
        guarded_step_(optimizer, scaler, bad)
        optimizer.zero_grad(set_to_none=True)
        clamp_logit_scale_(model)
        method.after_step(batch, step)
        _record_step_(result.stats, loss, bad)
        result.steps = step + 1
        if (step + 1) % log_every == 0 or step + 1 == steps:
            # the weights, buffers and optimizer state, reduced on the device with the interval's stats
            healthy = all_finite([*checked_tensors(model.state_dict()), *optimizer_tensors(optimizer)])
            stats = torch.cat([result.stats, healthy.to(result.stats)[None]])
            loss_sum, finite, skipped, _, longest, healthy = stats.tolist()  # sync: one host read per logging interval
            mean_loss = loss_sum / finite if finite else math.nan
            result.losses.append((step + 1, mean_loss))
            if skipped:
                result.nonfinite_steps += int(skipped)
                result.skips.append((step + 1, int(skipped)))
            if on_log is not None:
                on_log(step + 1, mean_loss)
            result.stats[:STAT_RUN] = 0
            result.stats[STAT_LONGEST] = result.stats[STAT_RUN]  # a run of skipped steps goes on across logs
            if not healthy:  # skipping steps cannot mend broken weights: always roll back
                result.rollback, result.diverged = True, "weights"
                break
            # a task shorter than max_bad_steps rolls back when every one of its steps was skipped
            if max_bad_steps and longest >= min(max_bad_steps, steps):
                result.rollback, result.diverged = True, "steps"
                break
        if on_step is not None:
            on_step(result)
    result.seconds = time.perf_counter() - t0
    return result
