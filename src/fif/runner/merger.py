"""Temporal merging inside a run (the ``merge`` config section): what each task trains from, what is
deployed, and the checkpoint history kept on disk. The merge math is :mod:`fif.merge`; this module owns the
files (the zero-shot weights, one file per task) and the running state a checkpoint holds."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from fif.core.io import atomic_write_bytes, safetensors_bytes
from fif.core.typed import ConfigError
from fif.merge.core import get_operator, merge
from fif.merge.temporal import ema_update_, history_weights

HISTORY_DIR = "history"


ZEROSHOT_FILE = "zeroshot.safetensors"


def history_file(task: int) -> str:
    """File name of task ``task``'s end weights (0-based) under ``<run>/history/``."""
    return f"task_{task:04d}.safetensors"


def history_paths(history_dir: str | os.PathLike) -> list[Path]:
    """The task checkpoints of a run's history folder, oldest first."""
    return sorted(Path(history_dir).glob("task_[0-9][0-9][0-9][0-9].safetensors"))


def _clone(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


class TemporalMerger:
    """The TIME axes of a run, for any update method: what each task trains from, and what is deployed.

    The runner drives it next to the method::

        TemporalMerger(config, <run>/history, model, method.deploy_weights, metadata)   at setup
        training_weights()          after begin_task: weights the task starts from, or None (keep the model)
        step_hook(model)            per task: a no-sync callable for after every optimizer step, or None
        end_task(task, latest)      after end_task: write the task's checkpoint, update the running merge
        deploy_weights(latest)      what to evaluate and ship, or None (the method's own)
        state_dict() / load_state_dict(state)    exact resume

    Weights are the deployed ones (``method.deploy_weights()``, else the model's state dict). Loading a
    merge into the model being trained (``init`` other than last, and the online EMA) therefore needs a
    method that trains the weights it deploys; adapter methods can still merge on the deploy side.

    Memory: the running merge (init/deploy = ema) and the online EMA (online_ema), at most two state
    dicts. θ0 and the task checkpoints are safetensors files under ``history/``, streamed from there by
    every merge that reads them (``all``, task-vector operators, ``zeroshot``, ``last_zeroshot``).

    Raises (constructor):
        ConfigError: the config asks to train from merged weights with a method whose deployed weights
            are another architecture (adapters merged in).
    """

    def __init__(
        self,
        config: Any,
        history_dir: str | os.PathLike,
        model: torch.nn.Module,
        deployed: Callable[[], Mapping[str, Tensor] | None],
        metadata: Mapping[str, str] | None = None,
    ):
        self.init, self.deploy = config.init, config.deploy
        self.op = get_operator(config.operator)
        self.options = dict(config.options)
        self.weights_scheme, self.alpha, self.ema_decay = config.weights, config.alpha, config.ema_decay
        self.include_zero_shot = bool(config.include_zero_shot)
        self.lines = dict(config.lines) if config.lines is not None else None
        self.history_dir = Path(history_dir)
        self.metadata = dict(metadata or {})
        axes = {self.init, self.deploy}
        self.keeps_running = "ema" in axes
        self.keeps_online = "online_ema" in axes
        self.writes_history = "all" in axes or bool(config.save_history)
        self.reads_zeroshot = (
            self.init == "zeroshot" or self.deploy == "last_zeroshot" or (self.op.task_vectors and bool(axes & {"ema", "all"}))
            or (self.include_zero_shot and "all" in axes)
        )
        self.tasks_done = 0
        self.running: dict[str, Tensor] | None = None
        self.online: dict[str, Tensor] | None = None
        self._cache: tuple[tuple[str, int], dict[str, Tensor]] | None = None  # a deploy merge, until the next task
        state = model.state_dict()
        self.device = next(iter(state.values())).device if state else torch.device("cpu")
        loads_model = self.init != "last" or self.keeps_online
        if not (loads_model or self.keeps_running or self.reads_zeroshot or config.save_history):
            return  # no merging: nothing to hold, nothing to write
        own = deployed()
        if loads_model and own is not None and set(own) != set(state):
            what = f"merge.init={self.init}" if self.init != "last" else "merge online_ema"
            raise ConfigError([
                f"{what} loads merged weights into the model being trained, but this method deploys another "
                f"architecture (e.g. adapters merged into the base weights); use merge.init=last with a deploy-side "
                f"merge (merge.deploy=ema, all or last_zeroshot), or merge.preset=none for no merging"
            ])
        zeroshot = own if own is not None else state
        if (self.reads_zeroshot or config.save_history) and not self.zeroshot_path.is_file():
            self._write(self.zeroshot_path, zeroshot, "zeroshot")
        if self.keeps_running:
            self.running = _clone(zeroshot)  # r_0 = θ0
        if self.keeps_online:
            self.online = _clone(state)

    @property
    def merges(self) -> bool:
        """Whether anything differs from plain training (init = deploy = last)."""
        return self.init != "last" or self.deploy != "last"

    @property
    def zeroshot_path(self) -> Path:
        return self.history_dir / ZEROSHOT_FILE

    def task_path(self, task: int) -> Path:
        return self.history_dir / history_file(task)

    # --- the runner's hooks ----------------------------------------------------------------------
    def training_weights(self) -> dict[str, Tensor] | None:
        """Weights the next task trains from (called after ``method.begin_task``); None = keep the model.

        The first task always starts from the model as it is (θ0, which every init equals then).
        """
        cached, self._cache = self._cache, None  # a deploy merge never outlives its task boundary
        if self.init == "last" or self.tasks_done == 0:
            return None
        if self.init == "zeroshot":

            return load_file(str(self.zeroshot_path))
        if self.init == "ema":
            return self.running
        if self.init == "online_ema":
            return self.online
        if cached is not None and cached[0] == ("all", self.tasks_done):
            return cached[1]
        return self._merge_history()

    def step_hook(self, model: torch.nn.Module) -> Callable[[], None] | None:
        """A callable for after every optimizer step that updates the online EMA, or None if not needed.

        It only issues device ops (one fused lerp), so it never syncs with the host. Build it once per
        task, after the task's start weights are loaded.
        """
        if self.online is None:
            return None
        live = model.state_dict()  # detached views: the optimizer updates them in place
        online, decay = self.online, self.ema_decay

        def update() -> None:
            ema_update_(online, live, decay)

        return update

    def end_task(self, task: int, latest: Callable[[], Mapping[str, Tensor]]) -> None:
        """After ``method.end_task``: write task ``task``'s weights to history and fold them into the running
        merge, as needed. ``latest`` gives the deployed weights (only called when needed)."""
        self._cache = None
        if self.writes_history or self.keeps_running:
            weights = latest()
            if self.writes_history:
                self._write(self.task_path(task), weights, str(task))
            if self.keeps_running:
                self.running = self._merge_pair(weights, self.running)
        self.tasks_done = task + 1

    def deploy_weights(self, latest: Callable[[], Mapping[str, Tensor]]) -> dict[str, Tensor] | None:
        """The weights to evaluate and ship, or None for the method's own (deploy = last, or no task done)."""
        if self.deploy == "last" or self.tasks_done == 0:
            return None
        if self.deploy == "ema":
            return self.running
        if self.deploy == "online_ema":
            return self.online
        key = (self.deploy, self.tasks_done)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        merged = self._merge_history() if self.deploy == "all" else self._merge_zeroshot(latest())
        self._cache = (key, merged)
        return merged

    # --- resume --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Tasks folded in, the running merge and the online EMA (history files are already on disk)."""
        return {"tasks_done": self.tasks_done, "running": self.running, "online": self.online}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (tensors move to the model's device).

        Raises:
            ValueError: the state does not fit this config, or history files it needs are missing.
        """
        if set(state) != {"tasks_done", "running", "online"}:
            raise ValueError(f"temporal merge state must hold tasks_done, running, online; got {sorted(state)}")
        for name, kept in (("running", self.keeps_running), ("online", self.keeps_online)):
            if (state[name] is not None) != kept:
                raise ValueError(f"the checkpoint's temporal merge state {'lacks' if kept else 'holds'} the {name} merge "
                                 f"that merge.init={self.init}, merge.deploy={self.deploy} {'needs' if kept else 'does not use'}")
        self.tasks_done = int(state["tasks_done"])
        self.running = {k: v.to(self.device) for k, v in state["running"].items()} if state["running"] is not None else None
        self.online = {k: v.to(self.device) for k, v in state["online"].items()} if state["online"] is not None else None
        self._cache = None
        if "all" in (self.init, self.deploy):
            missing = [str(self.task_path(t)) for t in range(self.tasks_done) if not self.task_path(t).is_file()]
            if missing:
                raise ValueError(f"checkpoint history incomplete: {', '.join(missing)} missing; merge.*=all cannot go on")

    # --- merges --------------------------------------------------------------------------------
    def _merge_pair(self, newest: Mapping[str, Tensor], older: Mapping[str, Tensor] | str | Path) -> dict[str, Tensor]:
        """merge(newest, older): weights (α, 1 − α) for interpolation/slerp; task vectors over θ0 otherwise."""
        if self.op.name == "interpolation":
            return merge("interpolation", [newest, older], weights=[self.alpha, 1.0 - self.alpha])
        if self.op.name == "slerp":
            return merge("slerp", [newest, older], t=1.0 - self.alpha, **self.options)
        return merge(self.op.name, [newest, older], self.zeroshot_path, lines=self.lines, **self.options)

    def _merge_zeroshot(self, latest: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """merge(latest, θ0); for task-vector operators θ0 + op(τ_latest) (e.g. LiNeS on the fine-tuned model)."""
        if self.op.task_vectors:
            return merge(self.op.name, [latest], self.zeroshot_path, lines=self.lines, **self.options)
        return self._merge_pair(latest, self.zeroshot_path)

    def _merge_history(self) -> dict[str, Tensor]:
        """The merge of every task checkpoint so far (θ0 first with ``include_zero_shot``), streamed from the
        history files."""
        paths = [self.zeroshot_path] if self.include_zero_shot else []
        paths += [self.task_path(t) for t in range(self.tasks_done)]
        n = len(paths)
        if n < self.op.min_models:  # e.g. Model Stock with one checkpoint: that checkpoint
            return merge("interpolation", paths[-1:])
        if self.op.name == "interpolation":
            return merge("interpolation", paths, weights=history_weights(self.weights_scheme, n))
        if self.op.task_vectors:
            return merge(self.op.name, paths, self.zeroshot_path, lines=self.lines, **self.options)
        return merge(self.op.name, paths, **self.options)

    def _write(self, path: Path, weights: Mapping[str, Tensor], task: str) -> None:
        atomic_write_bytes(path, safetensors_bytes(dict(weights), {**self.metadata, "task": task}))


class FollowerMerger:
    """The temporal merger on ranks other than 0 of a data-parallel run: merges nothing, holds nothing,
    writes nothing (rank 0's merged start weights arrive with DDP's broadcast at the start of every task;
    deployed weights are evaluated on rank 0)."""

    def training_weights(self) -> None:
        return None

    def step_hook(self, model: torch.nn.Module) -> None:
        return None

    def end_task(self, task: int, latest: Callable[[], Mapping[str, Tensor]]) -> None:
        pass

    def deploy_weights(self, latest: Callable[[], Mapping[str, Tensor]]) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass
