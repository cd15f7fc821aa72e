"""Optional outputs of a run's events: TensorBoard and Weights & Biases.

The run folder's ``events.jsonl`` is always written and is the source of truth; a sink only mirrors
the same events into another tool. Every sink is a callable ``sink(event)`` with a ``close()``, so
the runner feeds it exactly what it appends to the log, and :func:`replay` can feed it a finished
(or interrupted) run's log afterwards.

Scalars (one translation for every sink, see :class:`EventScalars`), all against the global
optimizer step of the stream:
    ``train/loss``; ``eval/A_KA``, ``eval/A_ZS``, ``eval/GM`` and ``eval/<dataset>`` after each task
    (``eval/tasks_done`` says which); ``eval_step/...`` for evaluations inside tasks
    (``eval.every_steps``); ``budget/spent_mafs``, ``budget/budget_mafs``, ``time/train_seconds``,
    ``time/eval_seconds``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from fif.eval.metrics import stream_point

log = logging.getLogger(__name__)


class Sink(Protocol):
    def __call__(self, event: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class EventScalars:
    """Turns events into ``(global step, {tag: value})``; tracks task offsets to place each task's steps.

    Stateful only in the running step offset, so feeding the same events gives the same scalars.
    """

    def __init__(self) -> None:
        self.offset = 0  # steps of all finished tasks
        self.task_offset: dict[int, int] = {}

    def __call__(self, event: dict[str, Any]) -> tuple[int, dict[str, float]] | None:
        kind = event.get("event")
        task = int(event.get("task", -1)) if event.get("task") is not None else -1
        if kind == "task_start":
            self.task_offset[task] = self.offset
            return None
        if kind == "train" and event.get("loss") is not None:
            return self._at(task, event["step"]), {"train/loss": float(event["loss"])}
        if kind == "task_end":
            start = self.task_offset.get(task, self.offset)
            self.offset = start + int(event.get("steps") or 0)
            out = {
                "budget/spent_mafs": event.get("spent_mafs"),
                "budget/budget_mafs": event.get("budget_mafs"),
                "time/train_seconds": event.get("train_seconds"),
            }
            return self.offset, {k: float(v) for k, v in out.items() if v is not None}
        if kind in ("eval", "eval_step"):
            prefix = "eval" if kind == "eval" else "eval_step"
            point = stream_point(event["scores"], event["roles"])
            out = {f"{prefix}/{k.upper()}": v for k, v in point.items() if v is not None}
            out.update({f"{prefix}/{d}": float(v) for d, v in event["scores"].items()})
            out["time/eval_seconds" if kind == "eval" else "time/eval_step_seconds"] = float(event.get("seconds", 0.0))
            if kind == "eval":
                out["eval/tasks_done"] = float(task + 1)
                step = 0 if task < 0 else self.offset
            else:
                step = self._at(task, event["step"])
            return step, out
        return None

    def prime(self, events: Iterable[dict[str, Any]]) -> int | None:
        """Track earlier events (a resumed run's log) without emitting them; returns their last step."""
        last = None
        for event in events:
            got = self(event)
            if got is not None:
                last = got[0] if last is None else max(last, got[0])
        return last

    def _at(self, task: int, step: int) -> int:
        return self.task_offset.get(task, self.offset) + int(step)


class TensorBoardSink:
    """Writes the run's scalars as TensorBoard event files under ``log_dir``.

    Raises:
        ImportError: tensorboard is not installed (the message says how to install it or turn it off).
    """

    def __init__(self, log_dir: str | Path, config_text: str | None = None, history: Iterable[dict] = ()):
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional extra: pip install 'fif[tensorboard]'
        except ImportError as e:
            raise ImportError(
                "log.tensorboard=true needs the tensorboard package: pip install 'fif[tensorboard]' "
                "(or pip install tensorboard), or set log.tensorboard=false"
            ) from e
        self.log_dir = Path(log_dir)
        self.scalars = EventScalars()
        last_step = self.scalars.prime(history)
        # A resumed run: hide what the crashed process logged after the checkpoint the log was cut back to.
        purge = None if last_step is None else last_step + 1
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)
        if config_text and purge is None:
            self.writer.add_text("config", "```\n" + config_text + "\n```", 0)

    def __call__(self, event: dict[str, Any]) -> None:
        got = self.scalars(event)
        if got is None:
            if event.get("event") == "run_end":
                self.writer.flush()
            return
        step, values = got
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        if event.get("event") == "eval":
            self.writer.flush()  # one flush per evaluation keeps the files current for a live TensorBoard

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """Logs the run's scalars to Weights & Biases; ``mode='offline'`` needs no account (files under ``run_dir``).

    Raises:
        ImportError: wandb is not installed (the message says how to install it or turn it off).
    """

    def __init__(
        self, project: str, run_dir: str | Path, mode: str = "offline", config: dict | None = None,
        name: str | None = None, history: Iterable[dict] = (),
    ):
        try:
            import wandb  # optional extra: pip install wandb
        except ImportError as e:
            raise ImportError(
                "log.wandb=true needs the wandb package: pip install 'fif[wandb]' (or pip install wandb), "
                "or set log.wandb=false"
            ) from e
        self.run = wandb.init(
            project=project, dir=str(run_dir), mode=mode, config=config or {}, name=name,
        )
        self.scalars = EventScalars()
        self.last_step = self.scalars.prime(history) or 0  # a resumed run continues the step axis (new W&B run)

    def __call__(self, event: dict[str, Any]) -> None:
        got = self.scalars(event)
        if got is None:
            return
        step, values = got
        # W&B drops rows whose step goes backwards; steps only grow here, but be safe for odd logs.
        self.last_step = max(self.last_step, step)
        self.run.log(values, step=self.last_step)

    def close(self) -> None:
        self.run.finish()


class FanOut:
    """Calls ``first`` (e.g. the CLI's printer) and then every sink with each event; closes the sinks.

    A sink that raises is logged and dropped, so a broken side output never stops a run.
    """

    def __init__(self, first: Callable[[dict], None] | None, sinks: Iterable[Sink]):
        self.first = first
        self.sinks = list(sinks)

    def __call__(self, event: dict[str, Any]) -> None:
        if self.first is not None:
            self.first(event)
        for sink in list(self.sinks):
            try:
                sink(event)
            except Exception as e:  # a side output must not kill the run; events.jsonl still has everything
                log.warning("dropping %s after an error: %s", type(sink).__name__, e)
                self.sinks.remove(sink)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as e:
                log.warning("closing %s failed: %s", type(sink).__name__, e)
        self.sinks = []


def build_sinks(
    run_dir: str | Path, tensorboard: bool = False, wandb: bool = False, wandb_project: str = "fif",
    wandb_mode: str = "offline", config: dict | None = None, config_text: str | None = None,
    history: Iterable[dict] = (),
) -> list[Sink]:
    """The sinks a run's ``log`` section asks for (TensorBoard files go to ``<run_dir>/tensorboard``).

    ``history`` is the log so far of a resumed run: the sinks continue its step axis and TensorBoard
    hides anything logged past it before the interruption.

    Raises:
        ImportError: a requested sink's package is missing (before any training starts).
    """
    run_dir = Path(run_dir)
    sinks: list[Sink] = []
    if tensorboard:
        sinks.append(TensorBoardSink(run_dir / "tensorboard", config_text, history))
    if wandb:
        sinks.append(WandbSink(wandb_project, run_dir, wandb_mode, config, name=run_dir.name, history=history))
    return sinks


def replay(events: Iterable[dict[str, Any]], sink: Sink, close: bool = True) -> None:
    """Feed logged events to ``sink`` (e.g. TensorBoard files for a run that was made without them)."""
    try:
        for event in events:
            sink(event)
    finally:
        if close:
            sink.close()
