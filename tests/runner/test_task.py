"""fif.runner.task: the parts of a task a run builds from its spec alone; with data workers, one set of worker
processes serves every task of a run (and one the evaluations), and the run computes exactly what it computes
without workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import dataloader

import fif
from fif.data.stream import build_tasks
from fif.runner.task import buffer_pool, task_pool
from small_run import SMALL_RUN


def test_the_buffer_is_every_earlier_tasks_data(toy):
    tasks = tuple(build_tasks(toy, "random", 3, seed=0, datasets=["toy_a", "toy_b"]))
    spec = SimpleNamespace(tasks=tasks, benchmark=toy)  # the buffer needs the stream and its data only
    assert buffer_pool(spec, tasks[0]) is None
    for task in tasks[1:]:
        expected = [(d.spec.name, idx.tolist()) for t in tasks[: task.index] for d, idx in task_pool(spec, t).segments]
        got = [(d.spec.name, idx.tolist()) for d, idx in buffer_pool(spec, task).segments]
        assert got == expected and len(expected) > 0


RUN = [*SMALL_RUN, "stream.tasks=3", "eval.every_steps=1"]  # in-task evaluations run while the feed is mid-task


def test_workers_start_once_per_run_and_change_nothing(tmp_path, monkeypatch):
    pools = []
    start = dataloader._MultiProcessingDataLoaderIter.__init__

    def record(self, loader):  # one call per start of a DataLoader's worker processes
        pools.append(type(loader.dataset.dataset).__name__)  # inside the WorkerSafe wrapper
        start(self, loader)

    monkeypatch.setattr(dataloader._MultiProcessingDataLoaderIter, "__init__", record)
    fif.run(fif.load_config("mini", RUN), out_dir=tmp_path / "in_process")
    assert pools == []
    fif.run(fif.load_config("mini", [*RUN, "data.num_workers=2", "eval.num_workers=2"]), out_dir=tmp_path / "workers")
    assert sorted(pools) == ["SplitImages", "StreamBatches"]  # not one pool per task (3 tasks)

    a, b = (json.loads((tmp_path / run / "summary.json").read_text()) for run in ("in_process", "workers"))
    assert a["trajectory"] == b["trajectory"] and a["final"] == b["final"]
    wa, wb = (load_file(str(tmp_path / run / "final.safetensors")) for run in ("in_process", "workers"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    steps = [json.loads(line) for line in (tmp_path / "workers" / "events.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "eval_step" for e in steps) >= 1


@pytest.mark.slow  # two CLI runs in subprocesses: ~1 min on 2 loaded cores
def test_a_group_sigterm_stops_a_run_with_workers_cleanly_and_it_resumes(tmp_path):
    """A cluster job's end sends SIGTERM to every process: the workers must end without torch raising in the
    main process before it writes its stop checkpoint (it did: a traceback from inside save_checkpoint)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    args = [*SMALL_RUN, "budget.ft_steps=40", "checkpoint.every_steps=3", "data.num_workers=2", "eval.num_workers=2"]
    proc = subprocess.Popen([sys.executable, "-m", "fif", "run", "--no-progress", "--out", str(out), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = out / "events.jsonl"
    deadline = time.monotonic() + 300
    while proc.poll() is None and not (log.is_file() and log.read_text().count('"event": "train"') >= 3):
        assert time.monotonic() < deadline, "the run never trained"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)  # the whole group: the run and its data workers
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err and "checkpoint saved" in err, err
    done = subprocess.run([sys.executable, "-m", "fif", "run", "--no-progress", "--resume", str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "summary.json").read_text())["final"]["task"] == 1


def test_paper_accounting_charges_a_task_pass_to_every_step_and_exact_once_per_task():
    from fif.budget import StepCost
    from fif.methods import HookCost
    from fif.runner.task import task_step_and_hook_mafs

    reference = StepCost(100.0, 10.0, "estimate", batch_size=8)
    fisher = HookCost(flops=2_000.0, peak_memory_bytes=10.0, samples=20)  # a pass over 20 samples: 3 steps of 8
    exact = task_step_and_hook_mafs(StepCost(100.0, 10.0, "estimate", batch_size=8), reference, fisher)
    assert exact == (100.0, 2_000.0)
    paper = task_step_and_hook_mafs(StepCost(100.0, 10.0, "estimate", batch_size=8, accounting="paper"), reference,
                                    fisher)  # fmt: skip
    assert paper == (100.0 * (1 + 3), 0.0)


def test_a_run_prices_its_steps_in_budget_accounting_and_records_it(tmp_path):
    """EWC with a 16-sample Fisher pass: exact charges the pass once per task, paper adds it to every step
    (the step then costs 2 steps at batch 16), so task 0 gets fewer steps; the last task runs no pass."""
    ewc = [*SMALL_RUN, "budget.ft_steps=16", "method.name=ewc", "method.fisher_samples=16",
           "method.fisher_batch_size=8"]  # fmt: skip
    steps, summaries, starts = {}, {}, {}
    for accounting in ("exact", "paper"):
        events = []
        cfg = fif.load_config("mini", [*ewc, f"budget.accounting={accounting}"])
        summaries[accounting] = fif.run(cfg, out_dir=tmp_path / accounting, on_event=events.append).summary
        steps[accounting] = [e["steps"] for e in events if e["event"] == "task_start"]
        starts[accounting] = next(e for e in events if e["event"] == "run_start")
    assert steps["paper"][0] < steps["exact"][0] and steps["paper"][1] == steps["exact"][1]
    assert [summaries[a]["ledger"]["accounting"] for a in ("exact", "paper")] == ["exact", "paper"]
    assert [starts[a]["accounting"] for a in ("exact", "paper")] == ["exact", "paper"]
    assert summaries["paper"]["ledger"]["hook_mafs"] == 0 < summaries["exact"]["ledger"]["hook_mafs"]
