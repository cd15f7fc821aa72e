"""One task's update loop: mixed batches → loss → backward → clip → step, nothing else in the way.

The loop is flat on purpose (nanoGPT style): every line of an optimizer step is visible in
:func:`train_task`. The only host syncs are at logging intervals and are marked ``# sync``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from fif.methods.base import Batch, UpdateMethod
from fif.model.clip import clamp_logit_scale_

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW settings (FiF reference: β 0.9/0.999, eps 1e-8, wd 0.2)."""

    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


@dataclass
class TaskLog:
    """What one task's loop reports: mean loss per logging interval, steps done, timing."""

    steps: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since last log)
    seconds: float = 0.0
    nonfinite_steps: int = 0


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """open_clip's exclusion rule: gains, biases, norms and the temperature are not decayed."""
    return param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def build_optimizer(named_params: list[tuple[str, nn.Parameter]], lr: float, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over ``named_params`` with weight decay only on matrices (see :func:`no_weight_decay`)."""
    decay = [p for n, p in named_params if not no_weight_decay(n, p)]
    no_decay = [p for n, p in named_params if no_weight_decay(n, p)]
    groups = [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": cfg.weight_decay},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=cfg.betas, eps=cfg.eps)


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on the device, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → bf16 on a GPU that supports it, else fp16 on older GPUs, fp32 on CPU."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def to_device(batch: Batch, device: torch.device) -> Batch:
    if batch.images.device == device:
        return batch
    return Batch(
        images=batch.images.to(device, non_blocking=True),
        tokens=batch.tokens.to(device, non_blocking=True),
        source=batch.source.to(device, non_blocking=True),
    )


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

    Returns:
        A :class:`TaskLog`.
    """
    import time

    model.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    result = TaskLog(steps=start_step)
    loss_sum = torch.zeros((), device=device)
    since_log = 0
    t0 = time.perf_counter()
    for step, batch in zip(range(start_step, steps), batches):
        batch = to_device(batch, device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        with autocast_context(device, precision):
            out = method.loss(batch, model)
        scaler.scale(out.total).backward()
        if grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        clamp_logit_scale_(model)
        method.after_step(batch, step)
        loss_sum += out.total.detach().float()
        since_log += 1
        result.steps = step + 1
        if (step + 1) % log_every == 0 or step + 1 == steps:
            mean_loss = float(loss_sum / since_log)  # sync: one host read per logging interval
            result.losses.append((step + 1, mean_loss))
            if not math.isfinite(mean_loss):
                result.nonfinite_steps += since_log
            if on_log is not None:
                on_log(step + 1, mean_loss)
            loss_sum.zero_()
            since_log = 0
    result.seconds = time.perf_counter() - t0
    return result
