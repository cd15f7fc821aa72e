"""Budget arithmetic: MAFs of a step, the run budget, its split over tasks, steps per task, hooks."""

from __future__ import annotations

import pytest

from fif.budget import (
    GIB,
    BudgetError,
    StepCost,
    budget_row,
    hook_cost_mafs,
    mafs_per_step,
    memory_multiplier,
    repeated_step_cost,
    run_budget_mafs,
    steps_for_task,
    task_budgets,
)
from fif.methods import HookCost

# ViT-B-16 @ 512, full fine-tuning, as measured by `fif budget` (any float will do; a realistic one).
FT = StepCost(flops=62_991_208_808_448.0, peak_memory_bytes=78.8 * GIB, memory_source="estimate")


def test_reference_step_costs_its_flops():
    assert memory_multiplier(FT, FT) == 1.0
    assert mafs_per_step(FT, FT) == FT.flops


def test_mafs_scale_flops_by_relative_peak_memory():
    half = StepCost(flops=1e12, peak_memory_bytes=FT.peak_memory_bytes / 2, memory_source="estimate")
    assert memory_multiplier(half, FT) == pytest.approx(0.5)
    assert mafs_per_step(half, FT) == pytest.approx(0.5e12)


def test_memory_measured_differently_is_refused():
    cuda = StepCost(flops=1e12, peak_memory_bytes=1e9, memory_source="cuda_max_allocated")
    with pytest.raises(BudgetError, match="same device"):
        mafs_per_step(cuda, FT)


def test_run_budget_from_ft_steps_or_absolute_mafs():
    assert run_budget_mafs(28_400, None, FT) == 28_400 * FT.flops
    assert run_budget_mafs(28_400, 5e17, FT) == 5e17  # absolute MAFs win
    for bad in [(None, None), (0, None), (-1, None), (None, 0.0)]:
        with pytest.raises(BudgetError):
            run_budget_mafs(*bad, FT)


@pytest.mark.parametrize("tasks, steps", [(20, 1420), (50, 568), (100, 284), (200, 142)])
def test_fif_budget_gives_full_finetuning_its_paper_steps(tasks, steps):
    """28,400 full fine-tuning steps split over T tasks: exactly 28,400 / T steps each, despite float division."""
    for flops in [FT.flops, 1.0, 3.0, 7.1e13, 123456789.123, 1e20 / 3]:
        ref = StepCost(flops=flops, peak_memory_bytes=1.0, memory_source="estimate")
        budgets = task_budgets(run_budget_mafs(28_400, None, ref), tasks)
        assert len(budgets) == tasks and sum(budgets) == pytest.approx(28_400 * flops)
        assert steps_for_task(budgets[0], mafs_per_step(ref, ref)) == steps


def test_cheaper_method_gets_proportionally_more_steps():
    cheap = StepCost(flops=FT.flops / 2, peak_memory_bytes=FT.peak_memory_bytes / 4, memory_source="estimate")
    budget = task_budgets(run_budget_mafs(28_400, None, FT), 20)[0]
    assert steps_for_task(budget, mafs_per_step(cheap, FT)) == 1420 * 8


def test_hooks_reduce_steps_and_a_budget_without_a_step_is_an_error():
    assert steps_for_task(100.0, 10.0) == 10
    assert steps_for_task(100.0, 10.0, hook_mafs=25.0) == 7
    with pytest.raises(BudgetError, match="buys no step"):
        steps_for_task(100.0, 10.0, hook_mafs=95.0)
    with pytest.raises(BudgetError, match="buys no step"):
        steps_for_task(5.0, 10.0)
    with pytest.raises(BudgetError):
        steps_for_task(100.0, 0.0)
    with pytest.raises(BudgetError):
        task_budgets(100.0, 0)


def test_hook_cost_uses_its_memory_and_unknown_memory_is_not_free():
    assert hook_cost_mafs(HookCost(), FT) == 0.0
    assert hook_cost_mafs(HookCost(flops=1e12, peak_memory_bytes=FT.peak_memory_bytes / 2), FT) == pytest.approx(5e11)
    assert hook_cost_mafs(HookCost(flops=1e12), FT) == 1e12  # no memory reported → charged at multiplier 1
    with pytest.raises(BudgetError):
        hook_cost_mafs(HookCost(flops=-1.0), FT)


def test_repeated_step_cost_adds_flops_not_memory():
    hook = repeated_step_cost(FT, 50_000 / 512)
    assert hook.flops == pytest.approx(FT.flops * 50_000 / 512)
    assert hook.peak_memory_bytes == FT.peak_memory_bytes


def test_budget_row_has_exactly_the_cli_fields():
    total = run_budget_mafs(28_400, None, FT)
    row = budget_row("finetune", FT, FT, total, {20: 0.0, 200: 0.0})
    fields = ["method", "accounting", "trainable_params", "gflops_per_step", "peak_memory_gib", "memory_multiplier",
              "mafs_per_step", "steps_per_task"]
    assert list(row) == fields
    assert row["steps_per_task"] == {"20": 1420, "200": 142}
    assert row["gflops_per_step"] == pytest.approx(FT.flops / 1e9)
    assert row["peak_memory_gib"] == pytest.approx(78.8)
    starved = budget_row("costly", FT, FT, total, {20: total / 20})  # the hook eats the whole task budget
    assert starved["steps_per_task"] == {"20": 0}


def test_step_cost_round_trips_through_a_dict():
    cost = StepCost(1.0, 2.0, "estimate", 0.5, 8, {"parameters": 2.0})
    assert StepCost.from_dict(cost.to_dict()) == cost


def test_paper_step_cost_charges_a_pass_per_step_as_whole_training_steps():
    from fif.budget import paper_step_cost
    from fif.methods import HookCost

    step = StepCost(flops=100.0, peak_memory_bytes=1.0, memory_source="estimate", batch_size=512)
    paper = paper_step_cost(step, HookCost(flops=12345.0, samples=50_000))
    assert paper.flops == 100.0 * (1 + 98) and paper.accounting == "paper"  # ceil(50000 / 512) = 98
    assert paper_step_cost(step, HookCost(flops=7.0)).flops == 107.0
    assert paper_step_cost(step, HookCost()).flops == 100.0
