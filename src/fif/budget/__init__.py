"""Compute budget in Memory-Adjusted FLOPs (MAFs): measure a step, turn a budget into steps, keep a ledger.

    MAFs(step) = FLOPs(step) × peak_memory(method step) / peak_memory(full fine-tuning step)
    steps(task) = floor((run budget / T − MAFs of the task's hooks) / MAFs per step)

(FoMo-in-Flux, Roth et al. 2024, §3.3). Nothing is typed by hand: :func:`measure_step_cost` counts a
step's FLOPs with ``FlopCounterMode`` on a synthetic batch (on the meta device: no data, no GPU) and
measures (CUDA) or estimates (CPU) its peak memory. See docs/budget.md.

Modules: ``mafs`` (StepCost and the budget arithmetic, pure), ``ledger`` (the run's ledger),
``measure`` (FLOP counting, tracing, peak memory).

Typical use by the runner::

    reference = measure_step_cost(clip, build_method("finetune", {}, clip), batch_size, device)
    cost = measure_step_cost(clip, method, batch_size, device)
    ledger = Ledger.for_run(run_budget_mafs(cfg.budget.ft_steps, cfg.budget.mafs, reference), num_tasks)
    for t, task in enumerate(tasks):
        hook = hook_cost_mafs(method.extra_cost(task), reference)
        steps = ledger.plan(t, mafs_per_step(cost, reference), hook)
        ...; ledger.charge(t, hook_mafs=hook); ...; ledger.charge(t, steps=steps)
"""

from fif.budget.ledger import Ledger, TaskLedger
from fif.budget.mafs import (
    ACCOUNTINGS,
    GIB,
    MEMORY_SOURCES,
    BudgetError,
    BudgetExceededError,
    StepCost,
    budget_row,
    hook_cost_mafs,
    mafs_per_step,
    max_steps,
    memory_multiplier,
    paper_step_cost,
    repeated_step_cost,
    run_budget_mafs,
    steps_for_task,
    task_budgets,
)
from fif.budget.measure import (
    SHARDINGS,
    Layout,
    StepTrace,
    estimate_peak_memory,
    measure_step_cost,
    meta_clip,
    trace_step,
)
from fif.core.flops import attention_backward_flops, attention_forward_flops, count_flops, flop_counting, meta_copy
from fif.data.batch import synthetic_batch

__all__ = [
    "ACCOUNTINGS",
    "GIB",
    "MEMORY_SOURCES",
    "SHARDINGS",
    "BudgetError",
    "BudgetExceededError",
    "Layout",
    "Ledger",
    "StepCost",
    "StepTrace",
    "TaskLedger",
    "attention_backward_flops",
    "attention_forward_flops",
    "budget_row",
    "count_flops",
    "estimate_peak_memory",
    "flop_counting",
    "hook_cost_mafs",
    "mafs_per_step",
    "max_steps",
    "measure_step_cost",
    "memory_multiplier",
    "meta_clip",
    "meta_copy",
    "paper_step_cost",
    "repeated_step_cost",
    "run_budget_mafs",
    "steps_for_task",
    "synthetic_batch",
    "task_budgets",
    "trace_step",
]
