"""Memory-Adjusted FLOPs: the cost of a step and the budget arithmetic (pure functions).

FoMo-in-Flux (Roth et al. 2024, §3.3) compares update methods at equal compute measured as

    MAFs(step) = FLOPs(step) × peak_memory(method step) / peak_memory(full fine-tuning step)

with both steps at the same model and batch size. The whole stream gets the compute of N full
fine-tuning steps (FiF: 28,400 at batch 512), split evenly over the T tasks, and every method gets

    steps(task) = floor((task budget − MAFs of the task's hooks) / MAFs per step)

so a cheaper method gets more steps at the same batch size, and a method with an expensive task hook
(EWC's Fisher pass) gets fewer.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from fif.methods.base import HookCost

GIB = 1024**3
REL_TOL = 1e-9  # float slack when dividing a budget into whole steps and when charging the ledger
MEMORY_SOURCES = ("cuda_max_allocated", "estimate")
# exact: what fif computes (attention's math; a task hook charged once per task).
# paper: FiF Tab. 4's count (a fused attention backward also recomputes QKᵀ; a task hook's pass of n samples
#   charged per step as ceil(n / batch) training steps, which is why EWC gets 14 steps per task at T = 20).
ACCOUNTINGS = ("exact", "paper")


class BudgetError(ValueError):
    """A budget that cannot be met or measured (the message says which value and how to fix it)."""


class BudgetExceededError(BudgetError):
    """Charging this would spend more than the task's budget."""


# ----------------------------------------------------------------------------------------------
# The cost of one step


@dataclass(frozen=True)
class StepCost:
    """Compute of one optimizer step of one method at one batch size.

    Attributes:
        flops: forward + backward FLOPs of ``method.loss`` (plus whatever the loss itself computes).
        peak_memory_bytes: peak device memory of a step (see ``memory_source``).
        memory_source: ``"cuda_max_allocated"`` (measured on a GPU) or ``"estimate"`` (CPU/meta:
            parameters + gradients + AdamW state + saved activations + the batch).
        forward_flops: the forward part of ``flops``.
        batch_size: samples per step.
        memory_parts: bytes per term of the estimate (empty when measured).
        accounting: how ``flops`` was counted (:data:`ACCOUNTINGS`).
        device_peak_bytes: peak memory of one device as the run lays the step out (rows per rank,
            micro-batches, recomputation, sharding: :class:`~fif.budget.measure.Layout`); 0 = not measured.
            What a GPU must hold; never part of the multiplier, so MAFs do not depend on the layout.
        device_batch_size: the samples one device holds at once (per-rank micro-batch).
        device_memory_source: how ``device_peak_bytes`` was obtained (:data:`MEMORY_SOURCES`).
        device_memory_parts: bytes per term of the per-device estimate (empty when measured).
        layout: the layout in words (e.g. ``"2 ranks (fsdp), 1 micro-batch, checkpointed"``).
    """

    flops: float
    peak_memory_bytes: float
    memory_source: str
    forward_flops: float = 0.0
    batch_size: int = 0
    memory_parts: Mapping[str, float] = field(default_factory=dict, compare=False, hash=False)
    accounting: str = "exact"
    # The per-device figures depend on the hardware layout, which a resume may change: not compared.
    device_peak_bytes: float = field(default=0.0, compare=False)
    device_batch_size: int = field(default=0, compare=False)
    device_memory_source: str = field(default="", compare=False)
    device_memory_parts: Mapping[str, float] = field(default_factory=dict, compare=False, hash=False)
    layout: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "memory_parts": dict(self.memory_parts),
                "device_memory_parts": dict(self.device_memory_parts)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StepCost":
        return cls(**data)


# ----------------------------------------------------------------------------------------------
# Budget arithmetic (pure)


def memory_multiplier(cost: StepCost, reference: StepCost) -> float:
    """peak memory of ``cost`` / peak memory of ``reference`` (full fine-tuning, same model and batch).

    Raises:
        BudgetError: the two were measured differently (a CUDA peak over a CPU estimate means nothing)
            or the reference has no memory.
    """
    if cost.memory_source != reference.memory_source:
        raise BudgetError(
            f"memory of the step was measured as {cost.memory_source!r} but the reference as "
            f"{reference.memory_source!r}; measure both on the same device"
        )
    if reference.peak_memory_bytes <= 0:
        raise BudgetError("the reference step has no peak memory; measure full fine-tuning first")
    return cost.peak_memory_bytes / reference.peak_memory_bytes


def mafs_per_step(cost: StepCost, reference: StepCost) -> float:
    """MAFs of one step: FLOPs × (peak memory / reference peak memory) (FiF §3.3).

    Full fine-tuning measured against itself gives exactly its FLOPs.
    """
    return cost.flops * memory_multiplier(cost, reference)


def hook_cost_mafs(hook: HookCost, reference: StepCost) -> float:
    """MAFs of a task hook: hook FLOPs × (hook peak memory / reference peak memory).

    A hook that reports FLOPs but no memory (``peak_memory_bytes == 0``) is charged at the reference's
    memory (multiplier 1): unknown memory is never free.
    """
    if hook.flops < 0 or hook.peak_memory_bytes < 0:
        raise BudgetError(f"hook cost must be non-negative, got {hook}")
    if hook.flops == 0:
        return 0.0
    if reference.peak_memory_bytes <= 0:
        raise BudgetError("the reference step has no peak memory; measure full fine-tuning first")
    multiplier = hook.peak_memory_bytes / reference.peak_memory_bytes if hook.peak_memory_bytes > 0 else 1.0
    return hook.flops * multiplier


def repeated_step_cost(step: StepCost, repeats: float) -> HookCost:
    """HookCost of running ``step`` ``repeats`` times (e.g. a Fisher pass of N samples at batch b: N/b).

    FLOPs add up, peak memory does not: HookCost(flops = repeats·step.flops, peak = step.peak).
    """
    if repeats < 0:
        raise BudgetError(f"repeats must be >= 0, got {repeats}")
    return HookCost(flops=step.flops * repeats, peak_memory_bytes=step.peak_memory_bytes)


def run_budget_mafs(ft_steps: float | None, mafs: float | None, reference: StepCost) -> float:
    """The whole stream's budget in MAFs.

    ``mafs`` (absolute) wins when given; otherwise ``ft_steps`` full fine-tuning steps at the
    reference's batch size: budget = ft_steps × MAFs(full FT step) = ft_steps × reference.flops.

    Raises:
        BudgetError: neither is set, or the budget is not positive.
    """
    if mafs is not None:
        if not mafs > 0:
            raise BudgetError(f"budget.mafs must be > 0, got {mafs}")
        return float(mafs)
    if ft_steps is None:
        raise BudgetError("no budget: set budget.ft_steps (FiF: 28400) or budget.mafs")
    if not ft_steps > 0:
        raise BudgetError(f"budget.ft_steps must be > 0, got {ft_steps}")
    return float(ft_steps) * mafs_per_step(reference, reference)


def task_budgets(total_mafs: float, num_tasks: int) -> list[float]:
    """Even split of the run budget: [total / T] × T."""
    if num_tasks < 1:
        raise BudgetError(f"number of tasks must be >= 1, got {num_tasks}")
    if not total_mafs > 0:
        raise BudgetError(f"run budget must be > 0 MAFs, got {total_mafs}")
    return [total_mafs / num_tasks] * num_tasks


def max_steps(task_budget_mafs: float, step_mafs: float, hook_mafs: float = 0.0) -> int:
    """floor((budget − hooks) / step), 0 when the hooks eat the budget. Never overspends beyond float slack."""
    if not step_mafs > 0:
        raise BudgetError(f"MAFs per step must be > 0, got {step_mafs}")
    if hook_mafs < 0:
        raise BudgetError(f"hook MAFs must be >= 0, got {hook_mafs}")
    ratio = (task_budget_mafs - hook_mafs) / step_mafs
    return max(0, math.floor(ratio * (1 + REL_TOL)))


def steps_for_task(task_budget_mafs: float, step_mafs: float, hook_mafs: float = 0.0) -> int:
    """Optimizer steps a task gets: floor((task budget − hook MAFs) / MAFs per step).

    Raises:
        BudgetError: less than one step fits (the message gives the numbers and the fixes).
    """
    steps = max_steps(task_budget_mafs, step_mafs, hook_mafs)
    if steps < 1:
        raise BudgetError(
            f"the task budget of {task_budget_mafs:.4g} MAFs buys no step: hooks cost {hook_mafs:.4g} MAFs and "
            f"one step {step_mafs:.4g} MAFs. Raise budget.ft_steps/budget.mafs, use fewer tasks, a smaller "
            f"batch, or make the method's task hooks cheaper"
        )
    return steps


def paper_step_cost(cost: StepCost, hook: HookCost) -> StepCost:
    """The step as FiF's Tab. 4 charges it: a task hook's pass over ``hook.samples`` samples added to every
    step as ceil(samples / batch) training steps (so EWC's step is 1 + ceil(50,000/512) = 99 steps);
    a hook that is no such pass is added to every step with its FLOPs. Memory is unchanged."""
    if hook.samples > 0:
        extra = math.ceil(hook.samples / max(cost.batch_size, 1)) * cost.flops
    else:
        extra = hook.flops
    return dataclasses.replace(cost, flops=cost.flops + extra, accounting="paper")


def budget_row(
    method: str, cost: StepCost, reference: StepCost, total_mafs: float, hook_mafs_by_tasks: Mapping[int, float],
    trainable_params: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One method's line of the `fif budget` table.

    Args:
        method: method name.
        cost, reference: the method's step and full fine-tuning's step (same model and batch).
        total_mafs: the run budget (:func:`run_budget_mafs`).
        hook_mafs_by_tasks: T → MAFs of one task's hooks when the stream has T tasks.
        trainable_params: elements the method trains (reported as is).

    Returns:
        ``method, accounting, trainable_params, gflops_per_step, peak_memory_gib, memory_multiplier,
        mafs_per_step`` and ``steps_per_task`` ({str(T): floor((total/T − hooks)/step)}, 0 when not even
        one step fits).
    """
    step = mafs_per_step(cost, reference)
    return {
        "method": method,
        "accounting": cost.accounting,
        "trainable_params": trainable_params,
        "gflops_per_step": cost.flops / 1e9,
        "peak_memory_gib": cost.peak_memory_bytes / GIB,
        "memory_multiplier": memory_multiplier(cost, reference),
        "mafs_per_step": step,
        "steps_per_task": {str(t): max_steps(total_mafs / t, step, hook) for t, hook in hook_mafs_by_tasks.items()},
    }
