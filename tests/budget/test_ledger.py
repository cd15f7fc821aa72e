"""The run's ledger: plans steps from the budget, charges steps and hooks, never overspends, round-trips."""

from __future__ import annotations

import json
import random

import pytest

from fif.budget import BudgetError, BudgetExceededError, Ledger, max_steps


def test_plan_and_charge_a_task():
    ledger = Ledger.for_run(total_mafs=1000.0, num_tasks=4)  # 250 per task
    assert [t.budget_mafs for t in ledger.tasks] == [250.0] * 4
    steps = ledger.plan(0, step_mafs=20.0, hook_mafs=15.0)
    assert steps == 11  # floor((250 - 15) / 20)
    ledger.charge(0, hook_mafs=15.0)
    remaining = ledger.charge(0, steps=steps)
    assert remaining == pytest.approx(250.0 - 15.0 - 220.0)
    entry = ledger.tasks[0]
    assert (entry.steps, entry.steps_done, entry.spent_mafs) == (11, 11, 235.0)
    summary = {"accounting": "exact", "budget_mafs": 1000.0, "spent_mafs": 235.0, "spent_fraction": 0.235, "steps": 11,
               "hook_mafs": 15.0}  # fmt: skip
    assert ledger.summary() == summary


def test_overspending_is_refused_and_nothing_is_recorded():
    ledger = Ledger.for_run(100.0, 1)
    steps = ledger.plan(0, step_mafs=30.0)
    ledger.charge(0, steps=steps)
    with pytest.raises(BudgetExceededError, match="would spend"):
        ledger.charge(0, steps=1)
    with pytest.raises(BudgetExceededError):
        ledger.charge(0, hook_mafs=10.1)
    assert ledger.tasks[0].steps_done == 3 and ledger.total_spent_mafs == 90.0


def test_planned_steps_always_fit_and_random_charging_never_overspends():
    rng = random.Random(0)
    for _ in range(500):
        total, tasks = rng.uniform(1e3, 1e20), rng.randint(1, 200)
        step = total / tasks / rng.uniform(4.0, 5000.0)
        hook = rng.choice([0.0, step * rng.uniform(0, 3)])
        ledger = Ledger.for_run(total, tasks)
        t = rng.randrange(tasks)
        steps = ledger.plan(t, step, hook)
        ledger.charge(t, hook_mafs=hook)
        ledger.charge(t, steps=steps)  # the plan itself always fits
        for _ in range(5):  # anything more is refused
            with pytest.raises(BudgetExceededError):
                ledger.charge(t, steps=rng.randint(1, 3))
        assert ledger.tasks[t].spent_mafs <= ledger.tasks[t].budget_mafs * (1 + 1e-9)
        assert max_steps(ledger.tasks[t].budget_mafs, step, hook) == steps


def test_ledger_round_trips_through_json():
    ledger = Ledger.for_run(1000.0, 3)
    ledger.plan(0, 7.0, 3.0)
    ledger.charge(0, hook_mafs=3.0)
    ledger.charge(0, steps=5)
    restored = Ledger.from_dict(json.loads(json.dumps(ledger.to_dict())))
    assert restored.to_dict() == ledger.to_dict()
    assert restored.plan(0, 7.0, 3.0) == ledger.tasks[0].steps  # resume re-plans with the same numbers
    restored.charge(0, steps=2)
    assert restored.tasks[0].steps_done == 7


def test_misuse_gives_clear_errors():
    ledger = Ledger.for_run(100.0, 2)
    with pytest.raises(BudgetError, match="plan"):
        ledger.charge(0, steps=1)
    with pytest.raises(BudgetError, match="outside"):
        ledger.plan(2, 1.0)
    with pytest.raises(BudgetError):
        ledger.charge(0, steps=-1)
    ledger.plan(0, 10.0)
    ledger.charge(0, steps=1)
    with pytest.raises(BudgetError, match="re-planned"):
        ledger.plan(0, 5.0)
    with pytest.raises(BudgetError):
        Ledger([])


def test_the_ledger_records_its_accounting_and_old_checkpoints_read_as_exact():
    ledger = Ledger.for_run(1000.0, 2, accounting="paper")
    assert ledger.summary()["accounting"] == "paper"
    assert Ledger.from_dict(json.loads(json.dumps(ledger.to_dict()))).accounting == "paper"
    old = {"tasks": Ledger.for_run(1000.0, 2).to_dict()["tasks"]}  # written before budget.accounting existed
    assert Ledger.from_dict(old).accounting == "exact"
    with pytest.raises(BudgetError, match="budget.accounting='papr': choose one of exact, paper"):
        Ledger.for_run(1000.0, 2, accounting="papr")
