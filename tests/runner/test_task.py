"""fif.runner.task: the parts of a task a run builds from its spec alone."""

from __future__ import annotations

from types import SimpleNamespace

from fif.data.stream import build_tasks
from fif.runner.task import buffer_pool, task_pool


def test_the_buffer_is_every_earlier_tasks_data(toy):
    tasks = tuple(build_tasks(toy, "random", 3, seed=0, datasets=["toy_a", "toy_b"]))
    spec = SimpleNamespace(tasks=tasks, benchmark=toy)  # the buffer needs the stream and its data only
    assert buffer_pool(spec, tasks[0]) is None
    for task in tasks[1:]:
        expected = [(d.spec.name, idx.tolist()) for t in tasks[: task.index] for d, idx in task_pool(spec, t).segments]
        got = [(d.spec.name, idx.tolist()) for d, idx in buffer_pool(spec, task).segments]
        assert got == expected and len(expected) > 0
