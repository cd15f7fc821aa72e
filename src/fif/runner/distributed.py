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
place from :func:`join` (:class:`fif.train.distributed.Solo` for one process, a world of size 1) and ask it
for every collective; :func:`attach` makes a set-up run a rank of a larger world.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from fif.train.distributed import Ranks, Solo, check_batch_size, global_batchnorm_, launched, start

if TYPE_CHECKING:  # annotations only: the run context imports nothing of this module
    from fif.runner.setup import RunContext


class NullEventLog:
    """The event log on ranks other than 0: same ``path`` (for reading), nothing written."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, event: dict[str, Any]) -> None:
        pass


class FollowerMerger:
    """The temporal merger on ranks other than 0: merges nothing, holds nothing, writes nothing (rank 0's
    merged start weights arrive with DDP's broadcast; deployed weights are evaluated on rank 0)."""

    def training_weights(self) -> None:
        return None

    def step_hook(self, model: Any) -> None:
        return None

    def end_task(self, task: int, latest: Callable[[], Any]) -> None:
        pass

    def deploy_weights(self, latest: Callable[[], Any]) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Any) -> None:
        pass


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


def attach(ctx: RunContext, ranks: Ranks | Solo) -> None:
    """Make a set-up run a rank of a data-parallel job (after :func:`fif.runner.setup.setup` on every rank);
    nothing to do in one process."""
    if ranks.world_size == 1:
        return
    ctx.dist = ranks
    # Every rank must take the same number of steps: rank 0's measured costs (CUDA peaks can differ) win.
    ctx.step_cost, ctx.reference_cost, ctx.ledger = ranks.broadcast((ctx.step_cost, ctx.reference_cost, ctx.ledger))
    global_batchnorm_(ctx.clip.model)  # after the budget's measurement: plain BatchNorm outside training steps
    if not ranks.is_main:
        ctx.events = NullEventLog(ctx.events.path)
        ctx.merger = FollowerMerger()
        ctx.on_event, ctx.progress = None, False


def dist_provenance(ranks: Ranks | Solo) -> dict[str, Any]:
    """What run.json records of the job's layout (nothing for one process)."""
    if ranks.world_size == 1:
        return {}
    return {"distributed": {"mode": "ddp", "world_size": ranks.world_size, "backend": ranks.backend}}
