"""fif.runner.state: a checkpoint holds the whole run state, and restoring it gives that state back."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fif.budget import Ledger, StepCost
from fif.config import load_config
from fif.runner.checkpoint import CHECKPOINT_DIR, Position, load_checkpoint
from fif.runner.setup import setup
from fif.runner.state import GuardState, RunState
from fif.runner.task import restore_run_state, run_task
from small_run import SMALL_RUN

pytestmark = pytest.mark.usefixtures("one_thread")

# The rest of a checkpoint's state: the components' own (method, merge), the task in progress, the RNGs and
# how far the event log had got.
NOT_RUN_STATE = {"method", "merge", "task_log", "rng", "events"}


def plain(value):
    """A field of the run state as comparable data."""
    if isinstance(value, (Ledger, StepCost)):
        return value.to_dict()
    if isinstance(value, GuardState):
        return dataclasses.asdict(value)
    if isinstance(value, torch.optim.Optimizer):
        sd = value.state_dict()
        moments = {k: {n: t.tolist() if torch.is_tensor(t) else t for n, t in s.items()} for k, s in sd["state"].items()}
        return moments, sd["param_groups"]
    return value


def test_a_checkpoint_holds_the_whole_run_state(tmp_path):
    cfg = load_config("mini", [*SMALL_RUN, "train.optimizer_reset=false", "checkpoint.every_steps=2", "eval.datasets=[mini_digits]"])
    spec, state = setup(cfg, tmp_path / "a")
    state.guard = GuardState(lr_scale=0.5, rollbacks=1)  # every field away from its fresh value
    state.bad_samples.add("pretraining_pool", "x.tar (sample 1)")
    run_task(spec, state, spec.tasks[0])  # checkpoints at step 2 and at the boundary after the task
    assert state.optimizer is not None and state.ledger.tasks[0].steps_done > 0

    boundary = load_checkpoint(tmp_path / "a" / CHECKPOINT_DIR / Position(1).name)
    assert set(boundary.state) == NOT_RUN_STATE | {"ledger", "costs", "guard", "optimizer", "bad_samples"}
    fresh, _ = setup(cfg, tmp_path / "b")
    restored, current = restore_run_state(fresh, boundary)
    assert current is None
    for f in dataclasses.fields(RunState):
        assert plain(getattr(restored, f.name)) == plain(getattr(state, f.name)), f.name

    mid = load_checkpoint(tmp_path / "a" / CHECKPOINT_DIR / Position(0, True, 2).name)
    restored, current = restore_run_state(fresh, mid)
    assert current.log.steps == 2 and current.info.steps == state.ledger.tasks[0].steps
    assert restored.guard == GuardState(0.5, 1) and restored.ledger.tasks[0].steps_done == 0
    steps = {int(s["step"]) for s in restored.optimizer.state_dict()["state"].values()}
    assert steps == {2}  # the task's optimizer two steps in
    kept = GuardState(0.25, 2)
    assert restore_run_state(fresh, mid, kept_guard=kept)[0].guard is kept  # a rollback keeps its own guard
