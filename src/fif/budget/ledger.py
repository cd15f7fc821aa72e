"""The run's ledger: per task budget, planned steps and hook costs, and what was spent.

A run can never spend more than its budget: :meth:`Ledger.charge` refuses any charge that would
overspend a task.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from fif.budget.mafs import ACCOUNTINGS, REL_TOL, BudgetError, BudgetExceededError, steps_for_task, task_budgets


@dataclass
class TaskLedger:
    """One task's line in the ledger: what was planned and what was spent."""

    budget_mafs: float
    step_mafs: float = 0.0  # 0 = not planned yet
    hook_mafs: float = 0.0  # planned hook cost
    steps: int = 0  # planned steps
    steps_done: int = 0
    hook_spent_mafs: float = 0.0

    @property
    def spent_mafs(self) -> float:
        return self.steps_done * self.step_mafs + self.hook_spent_mafs

    @property
    def remaining_mafs(self) -> float:
        return self.budget_mafs - self.spent_mafs


class Ledger:
    """Per-task budget, plan and spending of a run; refuses any charge that would overspend a task.

    Usage by the runner, per task t::

        steps = ledger.plan(t, step_mafs, hook_mafs)   # floor((budget − hooks) / step)
        ledger.charge(t, hook_mafs=hook_mafs)          # when the hook has run
        ledger.charge(t, steps=n)                      # after n optimizer steps (e.g. at log intervals)

    Round-trips through :meth:`to_dict` / :meth:`from_dict` (JSON-able) for checkpoints.
    """

    def __init__(self, budgets_mafs: Sequence[float], accounting: str = "exact"):
        if not budgets_mafs:
            raise BudgetError("a ledger needs at least one task")
        if accounting not in ACCOUNTINGS:
            raise BudgetError(f"budget.accounting={accounting!r}: choose one of {', '.join(ACCOUNTINGS)}")
        self.tasks = [TaskLedger(budget_mafs=float(b)) for b in budgets_mafs]
        self.accounting = accounting  # how the planned steps were priced (recorded, not used in the arithmetic)

    @classmethod
    def for_run(cls, total_mafs: float, num_tasks: int, accounting: str = "exact") -> "Ledger":
        """A ledger with the run budget split evenly over ``num_tasks``; ``accounting``: how steps are priced."""
        return cls(task_budgets(total_mafs, num_tasks), accounting)

    def _task(self, task: int) -> TaskLedger:
        if not 0 <= task < len(self.tasks):
            raise BudgetError(f"task {task} is outside the ledger's {len(self.tasks)} tasks (0..{len(self.tasks) - 1})")
        return self.tasks[task]

    def plan(self, task: int, step_mafs: float, hook_mafs: float = 0.0) -> int:
        """Fix a task's MAFs per step and hook cost; returns its steps (see :func:`steps_for_task`).

        Re-planning a task that already spent is allowed only with the same numbers (resume).
        """
        entry = self._task(task)
        steps = steps_for_task(entry.budget_mafs, step_mafs, hook_mafs)
        if entry.spent_mafs > 0 and (entry.step_mafs, entry.hook_mafs) != (step_mafs, hook_mafs):
            raise BudgetError(
                f"task {task} already spent {entry.spent_mafs:.4g} MAFs at {entry.step_mafs:.4g} MAFs/step and "
                f"{entry.hook_mafs:.4g} hook MAFs; it cannot be re-planned at {step_mafs:.4g} / {hook_mafs:.4g}"
            )
        entry.step_mafs, entry.hook_mafs, entry.steps = float(step_mafs), float(hook_mafs), steps
        return steps

    def charge(self, task: int, *, steps: int = 0, hook_mafs: float = 0.0) -> float:
        """Record ``steps`` optimizer steps and/or ``hook_mafs`` of hooks; returns the task's remaining MAFs.

        Raises:
            BudgetExceededError: the charge would spend more than the task's budget (nothing is recorded).
            BudgetError: steps charged before :meth:`plan`, or negative amounts.
        """
        entry = self._task(task)
        if steps < 0 or hook_mafs < 0:
            raise BudgetError(f"charges must be non-negative, got steps={steps}, hook_mafs={hook_mafs}")
        if steps and not entry.step_mafs:
            raise BudgetError(f"task {task}: plan(...) the task before charging steps")
        cost = steps * entry.step_mafs + hook_mafs
        if entry.spent_mafs + cost > entry.budget_mafs * (1 + REL_TOL):
            raise BudgetExceededError(
                f"task {task}: charging {cost:.4g} MAFs (steps={steps}, hooks={hook_mafs:.4g}) would spend "
                f"{entry.spent_mafs + cost:.4g} of its {entry.budget_mafs:.4g} MAFs budget "
                f"({entry.steps_done} of {entry.steps} planned steps done)"
            )
        entry.steps_done += steps
        entry.hook_spent_mafs += hook_mafs
        return entry.remaining_mafs

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def total_budget_mafs(self) -> float:
        return sum(t.budget_mafs for t in self.tasks)

    @property
    def total_spent_mafs(self) -> float:
        return sum(t.spent_mafs for t in self.tasks)

    @property
    def total_steps(self) -> int:
        return sum(t.steps_done for t in self.tasks)

    def summary(self) -> dict[str, Any]:
        """Totals for the run summary (and the accounting the steps were priced in)."""
        budget, spent = self.total_budget_mafs, self.total_spent_mafs
        return {
            "accounting": self.accounting,
            "budget_mafs": budget,
            "spent_mafs": spent,
            "spent_fraction": spent / budget,
            "steps": self.total_steps,
            "hook_mafs": sum(t.hook_spent_mafs for t in self.tasks),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"accounting": self.accounting, "tasks": [dataclasses.asdict(t) for t in self.tasks]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Ledger":
        # checkpoints written before budget.accounting existed were priced exactly
        ledger = cls([t["budget_mafs"] for t in data["tasks"]], data.get("accounting", "exact"))
        ledger.tasks = [TaskLedger(**t) for t in data["tasks"]]
        return ledger
