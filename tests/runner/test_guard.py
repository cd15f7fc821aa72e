"""Guarded training: non-finite steps are skipped and counted without touching weights or optimizer state;
K consecutive ones make the run roll back to its last checkpoint with the learning rate scaled down."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from fif.config import load_config
from fif.core.optim import OptimConfig, build_optimizer
from fif.data.batch import Batch
from fif.methods import BaseMethod, LossOutput, register_method
from fif.methods.base import TaskInfo
from fif.train.loop import train_task

CPU = torch.device("cpu")


class ToyMethod:
    """A quadratic loss on a linear layer; NaN at the steps in ``bad`` (counted by loss calls)."""

    def __init__(self, bad: set[int]):
        self.bad, self.calls = bad, 0

    def loss(self, batch: Batch, model: nn.Module) -> LossOutput:
        loss = model(batch.images).pow(2).mean()
        if self.calls in self.bad:
            loss = loss * float("nan")
        self.calls += 1
        return LossOutput(loss)

    def after_step(self, batch: Batch, step: int) -> None:
        pass


def toy_batches(n: int) -> list[Batch]:
    g = torch.Generator().manual_seed(0)
    return [Batch(torch.randn(8, 4, generator=g), torch.zeros(8, 2, dtype=torch.long), torch.ones(8, dtype=torch.int8))
            for _ in range(n)]


def toy_run(bad: set[int], steps: int = 8, impl: str = "foreach", max_bad_steps: int = 0, log_every: int = 4):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = build_optimizer(list(model.named_parameters()), 1e-2, OptimConfig(impl=impl))
    seen = []
    log = train_task(model, ToyMethod(bad), opt, toy_batches(steps), lambda s: 1e-2, steps, CPU, log_every=log_every,
                     on_step=lambda lg: seen.append((lg.steps, {n: p.detach().clone() for n, p in model.named_parameters()},
                                                     int(next(iter(opt.state.values()))["step"]) if opt.state else 0)),
                     max_bad_steps=max_bad_steps)
    return log, seen


@pytest.mark.parametrize("impl", ["foreach", "fused"])
def test_a_nonfinite_step_is_skipped_and_counted(impl):
    log, seen = toy_run({2, 5}, impl=impl)
    assert log.steps == 8 and log.nonfinite_steps == 2 and not log.rollback
    assert log.skips == [(4, 1), (8, 1)]
    for skipped in (2, 5):  # step index `skipped` left weights and Adam's step count as they were
        before, after = seen[skipped - 1], seen[skipped]
        assert all(torch.equal(before[1][n], after[1][n]) for n in before[1])
        assert after[2] == before[2]
    assert all(math.isfinite(loss) for _, loss in log.losses)
    clean, _ = toy_run(set(), impl=impl)
    assert clean.nonfinite_steps == 0 and clean.skips == []


def test_k_consecutive_bad_steps_request_a_rollback_at_the_next_log():
    log, _ = toy_run({1, 2, 3}, max_bad_steps=3, log_every=4)
    assert log.rollback and log.steps == 4  # seen at the log of step 4
    log, _ = toy_run({1, 2, 4}, max_bad_steps=3)  # never 3 in a row
    assert not log.rollback and log.steps == 8 and log.nonfinite_steps == 3


def test_a_run_of_bad_steps_is_counted_across_log_intervals():
    log, _ = toy_run({3, 4, 5}, max_bad_steps=3, log_every=4)
    assert log.rollback and log.steps == 8


def test_a_task_shorter_than_max_bad_steps_rolls_back_when_every_step_was_skipped():
    log, _ = toy_run(set(range(8)), max_bad_steps=10, log_every=50)
    assert log.rollback and log.diverged == "steps" and log.steps == 8
    log, _ = toy_run(set(range(1, 8)), max_bad_steps=10, log_every=50)  # step 0 learnt: skipped, not rolled back
    assert not log.rollback and log.nonfinite_steps == 7


class BreakWeights(ToyMethod):
    """Finite losses, but after step ``at`` the weights (or the optimizer's moments) hold NaN/inf: what a huge
    learning rate or eps=0 does (the loss and gradient checks cannot see it)."""

    def __init__(self, at: int, where: str, optimizer=None):
        super().__init__(set())
        self.at, self.where, self.optimizer, self.model = at, where, optimizer, None

    def loss(self, batch, model):
        self.model = model
        return super().loss(batch, model)

    def after_step(self, batch, step):
        if step != self.at:
            return
        with torch.no_grad():
            if self.where == "weights":
                self.model.weight[0, 0] = float("inf")
            else:
                next(iter(self.optimizer.state.values()))["exp_avg_sq"].view(-1)[0] = float("nan")


@pytest.mark.parametrize("where", ["weights", "optimizer"])
def test_nonfinite_weights_or_optimizer_state_stop_the_task_at_the_next_log(where):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = build_optimizer(list(model.named_parameters()), 1e-2, OptimConfig(impl="foreach"))
    seen = []
    log = train_task(model, BreakWeights(5, where, opt), opt, toy_batches(12), lambda s: 1e-2, 12, CPU, log_every=4,
                     on_step=lambda lg: seen.append(lg.steps), max_bad_steps=0)  # even when only skipping
    assert log.rollback and log.diverged == "weights" and log.steps == 8
    assert seen == list(range(1, 8))  # on_step (which checkpoints) never saw the broken step 8


def test_the_guard_adds_no_host_sync_between_logs():
    """The weights check rides on the logging interval's one read: no extra .item()/.tolist() per step."""
    calls = {"n": 0}
    real = torch.Tensor.tolist

    def counting(t):
        calls["n"] += 1
        return real(t)

    torch.Tensor.tolist = counting
    try:
        toy_run(set(), steps=8, log_every=4)
    finally:
        torch.Tensor.tolist = real
    assert calls["n"] == 2


def test_resumed_task_log_continues_the_interval_exactly():
    full, _ = toy_run(set(), steps=8, log_every=4)
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = build_optimizer(list(model.named_parameters()), 1e-2, OptimConfig(impl="foreach"))
    method = ToyMethod(set())
    states = {}
    train_task(model, method, opt, toy_batches(8)[:3], lambda s: 1e-2, 8, CPU, log_every=4,
               on_step=lambda lg: states.update({lg.steps: lg.state_dict()}))
    from fif.train.loop import TaskLog

    resumed = TaskLog.from_state_dict(states[3])
    out = train_task(model, method, opt, toy_batches(8)[3:], lambda s: 1e-2, 8, CPU, log_every=4, log=resumed)
    assert out.losses == full.losses


# ----------------------------------------------------------------------------------------------
# The runner's policy, with NaNs injected by a registered test method

POISON: dict = {"plan": set(), "fired": set(), "once": True}


@register_method("test_nan_poison")
class NanPoison(BaseMethod):
    """Fine-tuning whose loss is NaN at the (task, step) pairs of POISON['plan'] (test only)."""

    @dataclass
    class Config:
        pass

    task, step = -1, 0  # -1: the budget's cost measurement, before any task

    def begin_task(self, task: TaskInfo) -> None:
        self.task, self.step = task.index, 0

    def loss(self, batch, model):
        out = super().loss(batch, model)
        key = (self.task, self.step)
        if key in POISON["plan"] and not (POISON["once"] and key in POISON["fired"]):
            POISON["fired"].add(key)
            return LossOutput(out.total * float("nan"), out.parts)
        return out

    def after_step(self, batch, step: int) -> None:
        self.step = step + 1

    def state_dict(self):
        return {"task": self.task, "step": self.step}

    def load_state_dict(self, state):
        self.task, self.step = state["task"], state["step"]


TINY = [
    "model.pretrained=null", "budget.ft_steps=16", "stream.tasks=2", "train.batch_size=8", "train.log_every=4",
    "checkpoint.every_steps=3", "eval.min_samples=10", "method.name=test_nan_poison", "run.threads=1",
    "data.options={pool_size: 200, train_per_class: 6, test_per_class: 3, eval_size: 30, retrieval_train: 30, "
    "retrieval_test: 10}",
    "stream.datasets=[mini_digits,mini_letters]", "eval.datasets=[mini_digits,mini_colors]",
]


def poisoned_run(tmp_path, plan, once=True, extra=()):
    from fif.runner.stream import run

    POISON.update(plan=set(plan), fired=set(), once=once)
    threads = torch.get_num_threads()  # run.threads=1 (a shared CPU) sets it for the whole process
    try:
        return run(load_config("mini", TINY + list(extra)), out_dir=tmp_path / "run")
    finally:
        torch.set_num_threads(threads)


def read_events(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]


def test_consecutive_nans_roll_back_to_the_last_checkpoint_with_half_the_lr(tmp_path):
    result = poisoned_run(tmp_path, [(1, s) for s in range(4, 8)], extra=["guard.max_bad_steps=3"])
    events = read_events(tmp_path)
    rollbacks = [e for e in events if e["event"] == "rollback"]
    assert len(rollbacks) == 1
    r = rollbacks[0]
    assert (r["task"], r["step"], r["lr_scale"], r["rollbacks"]) == (1, 8, 0.5, 1)
    assert (r["to_task"], r["to_step"]) == (1, 6)  # the newest checkpoint: written mid-run of skipped steps
    # steps 4-7 skipped, seen at the log of step 8; back at step 6 (4 and 5 stay skipped), 6 and 7 redone
    skipped = [(e["step"], e.get("skipped"), e["loss"] is None) for e in events if e["event"] == "train" and e["task"] == 1]
    assert skipped == [(4, None, False), (8, 4, True), (8, 2, False)]
    assert [e["skipped_steps"] for e in events if e["event"] == "task_end"] == [0, 2]
    assert [e["task"] for e in events if e["event"] == "task_end"] == [0, 1]
    assert all(torch.isfinite(v).all() for v in result.clip.model.state_dict().values() if v.is_floating_point())
    assert result.summary["final"]["task"] == 1
    assert result.summary["guard"] == {"skipped_steps": 2, "skipped_per_task": [0, 2], "rollbacks": 1}


def test_isolated_nans_are_only_skipped_and_reported_in_the_table_and_summary(tmp_path):
    import io

    from fif.cli.run import TablePrinter, guard_line

    result = poisoned_run(tmp_path, [(0, 2), (0, 5)])
    events = read_events(tmp_path)
    assert not [e for e in events if e["event"] == "rollback"]
    assert [e["skipped_steps"] for e in events if e["event"] == "task_end"] == [2, 0]
    assert [e.get("skipped") for e in events if e["event"] == "train" and e["task"] == 0] == [1, 1]
    assert result.summary["guard"] == {"skipped_steps": 2, "skipped_per_task": [2, 0], "rollbacks": 0}
    table = io.StringIO()
    printer = TablePrinter(table)
    for event in events:
        printer(event)
    rows = table.getvalue().splitlines()
    assert rows[-2].endswith("(2 of 8 steps skipped: non-finite)") and "skipped" not in rows[-1]
    assert guard_line(result.summary) == ("guard: 2 steps skipped for a non-finite loss or gradient (per task: 2, 0), "
                                          "0 rollbacks")


@register_method("test_nan_weights")
class NanWeights(NanPoison):
    """Fine-tuning whose weights turn NaN after the (task, step) pairs of POISON['plan'] (once), with finite
    losses: only a check of the weights can see it."""

    def loss(self, batch, model):
        return BaseMethod.loss(self, batch, model)

    def after_step(self, batch, step: int) -> None:
        key = (self.task, step)
        if key in POISON["plan"] and key not in POISON["fired"]:
            POISON["fired"].add(key)
            with torch.no_grad():
                next(self.clip.model.parameters()).view(-1)[0] = float("nan")
        self.step = step + 1


def test_weights_broken_between_logs_are_never_checkpointed(tmp_path):
    """Step 3 is checkpointed (every_steps=3) but not logged (log_every=4): the checkpoint finds the NaN,
    writes nothing and rolls back."""
    from safetensors.torch import load_file

    result = poisoned_run(tmp_path, [(0, 2)], extra=["method.name=test_nan_weights"])
    events = read_events(tmp_path)
    rollbacks = [e for e in events if e["event"] == "rollback"]
    assert [(r["task"], r["step"], r["reason"], r["to_task"], r["to_step"]) for r in rollbacks] == [(0, 3, "weights", 0, 0)]
    for ckpt in (tmp_path / "run" / "checkpoints").iterdir():
        assert all(torch.isfinite(v).all() for v in load_file(str(ckpt / "model.safetensors")).values()
                   if v.is_floating_point()), ckpt.name
    assert all(torch.isfinite(v).all() for v in result.clip.model.state_dict().values() if v.is_floating_point())


@pytest.mark.slow
def test_persistent_nans_stop_the_run_with_a_clear_error(tmp_path):
    from fif.runner.folder import TrainingDivergedError

    with pytest.raises(TrainingDivergedError, match="after 1 rollbacks .*Lower train.lr"):
        poisoned_run(tmp_path, [(0, s) for s in range(8)], once=False,
                     extra=["guard.max_bad_steps=2", "guard.max_rollbacks=1"])
    events = read_events(tmp_path)
    assert [e["lr_scale"] for e in events if e["event"] == "rollback"] == [0.5]
