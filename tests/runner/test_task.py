"""fif.runner.task: the parts of a task a run builds from its spec alone; with data workers, one set of worker
processes serves every task of a run (and one the evaluations), and the run computes exactly what it computes
without workers."""

from __future__ import annotations

import json
from types import SimpleNamespace

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
        pools.append(type(loader.dataset).__name__)
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
