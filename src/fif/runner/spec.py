"""What a run is, apart from where it stands: the :class:`RunSpec` that :func:`fif.runner.setup.setup`
builds once, and the event channel every part of the run reports through.

The spec never changes its fields: the config, the tasks, the components (model, method, evaluator,
temporal merger) and this process's place in the world. What a run changes as it goes and a checkpoint
holds is :class:`fif.runner.state.RunState`; the components' own state (the model's weights, the
method's and the merger's ``state_dict``) lives in the components and is checkpointed next to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from fif.config import Config
from fif.data.loader import PersistentLoader
from fif.data.mixture import Pool
from fif.data.registry import Benchmark
from fif.data.stream import Task
from fif.eval.zeroshot import Evaluator
from fif.methods import UpdateMethod
from fif.model.clip import Clip
from fif.results.events import EventLog
from fif.results.sinks import FanOut, Sink
from fif.runner.folder import StopSignals
from fif.runner.merger import FollowerMerger, TemporalMerger
from fif.train.distributed import Ranks, Solo

EVENTS_FILE = "events.jsonl"


class RunEvents:
    """The run's event channel: each event gets its time, is appended to ``events.jsonl`` and then passed to
    the listener (the caller's ``on_event``, then the sinks of the ``log`` section).

    On ranks other than 0 of a data-parallel run it writes and tells nothing (``log`` and ``listener``
    None); ``path`` still names rank 0's log, for reading.
    """

    def __init__(self, path: Path, log: EventLog | None, listener: Callable[[dict], None] | None = None):
        self.path, self.log, self.listener = Path(path), log, listener

    def emit(self, event: dict[str, Any]) -> None:
        event = {"event": event.pop("event"), "time": round(time.time(), 3), **event}
        if self.log is not None:
            self.log.append(event)
        if self.listener is not None:
            self.listener(event)

    def add_sinks(self, sinks: Sequence[Sink]) -> None:
        """Pass every later event to ``sinks`` too, after the listener."""
        if sinks:
            self.listener = FanOut(self.listener, sinks)

    def close(self) -> None:
        """Close the sinks (the event log needs no closing: it is appended and fsynced per event)."""
        if isinstance(self.listener, FanOut):
            self.listener.close()


@dataclass(frozen=True)
class RunSpec:
    """Everything a run builds once, before its first task, and never rebinds.

    Attributes:
        cfg: the validated config.
        out_dir: the run folder.
        device / precision: where and in which autocast precision the run trains.
        benchmark: the datasets; ``tasks``: the stream, in order (``tasks[i].index == i``).
        clip / method: the model being trained and the update method that trains it.
        evaluator: scores deployed weights after each task.
        pretraining_pool: the pretraining samples the mixture draws from (None without one).
        merger: the ``merge`` section's axes (a :class:`FollowerMerger` on ranks other than 0).
        events: the event channel (silent on ranks other than 0).
        ranks: this process's place in the world; :class:`Solo` for one process.
        stop: the SIGINT/SIGTERM handler of ``run``/``resume`` (None when the caller drives tasks itself).
        progress: show tqdm bars (rank 0 only).
        feed: the worker processes that build the training batches (``data.num_workers``; started at the
            first task, they serve every task); None builds them in this process.
    """

    cfg: Config
    out_dir: Path
    device: torch.device
    precision: str
    benchmark: Benchmark
    clip: Clip
    method: UpdateMethod
    tasks: tuple[Task, ...]
    evaluator: Evaluator
    pretraining_pool: Pool | None
    merger: TemporalMerger | FollowerMerger
    events: RunEvents
    ranks: Ranks | Solo
    stop: StopSignals | None = None
    progress: bool = False
    feed: PersistentLoader | None = None

    def emit(self, event: dict[str, Any]) -> None:
        """Log ``event`` (see :class:`RunEvents`)."""
        self.events.emit(event)
