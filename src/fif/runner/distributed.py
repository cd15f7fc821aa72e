"""A run on several processes (``torchrun ... fif run train.distributed=ddp``): what every rank does and
what only rank 0 does.

- Every rank sets up the same run (rank 0 first, so base models and data caches are built once), plans
  the same steps from rank 0's measured step cost, trains its rows of each global batch under DDP
  (:mod:`fif.train.distributed`) and runs the same task hooks on the same data.
- Only rank 0 writes the run folder (config.yaml, run.json, events, checkpoints, merge history, summary,
  final weights), evaluates, prints and feeds the sinks. The others skip evaluation and wait for rank 0
  at their next collective (the next task's DDP broadcast, or the end of the run); the process group's
  timeout (``train.dist_timeout_minutes``) must outlast the longest evaluation.
- Temporal merging runs on rank 0 only: a task's start weights reach the other ranks through the
  broadcast DDP makes when it is built at the start of every task.
- A stop signal (SIGINT/SIGTERM) is honoured at the next logging step that every rank agrees on, with
  one checkpoint written by rank 0. Resume: every rank loads the checkpoint rank 0 picked.

There is one run path: :func:`fif.runner.stream.run` and :func:`fif.runner.stream.resume` take this process's
place from :func:`join` (:class:`fif.train.distributed.Solo` for one process, a world of size 1), hand it to
:func:`fif.runner.setup.setup` (which builds the silent event channel and the :class:`~fif.runner.merger.FollowerMerger`
of the other ranks) and ask it for every collective; :func:`share_plan` makes every rank plan with rank 0's costs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fif.runner.spec import RunSpec
from fif.runner.state import RunState
from fif.train.distributed import Ranks, Solo, check_batch_size, launched, start


def join(mode: str, device: str, timeout_minutes: float, batch_size: int, resuming: bool = False) -> Ranks | Solo:
    """This process's place in the run: the ranks of a torchrun job, or :class:`Solo` for one process.

    Raises:
        ValueError: see :func:`fif.train.distributed.start`; under torchrun with several processes while the run's
            config says ``train.distributed=none`` (resume: add ``train.distributed=ddp``).
    """
    if not launched() and (mode == "none" or resuming):
        return Solo()
    ranks = start(mode, device, timeout_minutes)
    if ranks is None:
        if resuming and launched():  # launched() said several processes; start() returns None only for one
            raise ValueError("resume under torchrun found no process group; launch with torchrun --nproc_per_node=N")
        return Solo()
    check_batch_size(batch_size, ranks.world_size)
    return ranks


def share_plan(spec: RunSpec, state: RunState) -> RunState:
    """Make a set-up run (:func:`fif.runner.setup.setup`, called on every rank) one rank of its world: every
    rank takes rank 0's measured step costs and ledger, and the model's BatchNorm layers normalise over the
    global batch. Call it on every rank (it is a collective); in one process it changes nothing.

    Returns:
        The state every rank plans with.
    """
    # Every rank must take the same number of steps: rank 0's measured costs (CUDA peaks can differ) win.
    step_cost, reference_cost, ledger = spec.ranks.broadcast((state.step_cost, state.reference_cost, state.ledger))
    spec.ranks.prepare_model_(spec.clip.model)  # after the budget's measurement: plain BatchNorm outside training steps
    return replace(state, step_cost=step_cost, reference_cost=reference_cost, ledger=ledger)


def dist_provenance(ranks: Ranks | Solo) -> dict[str, Any]:
    """What run.json records of the job's layout (nothing for one process)."""
    if ranks.world_size == 1:
        return {}
    return {"distributed": {"mode": "ddp", "world_size": ranks.world_size, "backend": ranks.backend}}
