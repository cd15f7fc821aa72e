"""The UpdateMethod contract, the CLIP loss every method builds on, and the method registry.

A method is constructed once per run with the model (it may inject adapters into it) and its own
config dataclass. The runner then drives it through the hooks, in this order, for every task::

    begin_task(task) → [loss(batch, model) → backward → step → after_step(batch, step)] × steps
                     → end_task(task) → deploy_weights() → evaluate

Methods return values (losses, costs, weights); they never reach into the runner.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator

import torch
from torch import nn

from fif.core.typed import ConfigError, from_dict
from fif.data.batch import Batch
from fif.model.clip import Clip
from fif.model.loss import clip_contrastive_loss, clip_features


@dataclass
class TaskInfo:
    """What a method may know about a task.

    ``batches(batch_size)`` gives task hooks (EWC's Fisher pass, MAS's importance pass) one pass over the
    current task's training data only, on the device, in a seeded order of its own (same seed, same
    batches); it is None where no data is at hand (``fif budget``, unit tests). ``num_samples`` is the
    task's training-set size (0 = unknown), so ``extra_cost`` can size a pass before it runs.

    ``seed`` is the run seed: methods that draw (replay reservoirs, GDumb's memory) seed from it and the
    task index. ``reference_texts(n)`` gives n captions of the pretraining pool drawn with the run seed
    (same n, same captions; fewer when the pool is smaller), e.g. ZSCL's reference set; None without a pool.
    """

    index: int  # 0-based task index
    num_tasks: int
    concepts: list[str]  # "DATASET+++classname"
    steps: int  # optimizer steps this task gets from the budget
    num_samples: int = 0  # training samples of the task's concepts (0 = unknown)
    batches: Callable[[int], Iterator["Batch"]] | None = field(default=None, repr=False, compare=False)
    seed: int = 0  # the run seed
    reference_texts: Callable[[int], list[str]] | None = field(default=None, repr=False, compare=False)


@dataclass
class LossOutput:
    """The total loss to backpropagate and its named parts (detached, for logging)."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class HookCost:
    """Compute a task hook spends outside the training steps (charged to the budget)."""

    flops: float = 0.0
    peak_memory_bytes: float = 0.0


@dataclass
class NoOptions:
    """Config of a method without options."""


class UpdateMethod:
    """Base of every update method: plain fine-tuning unless a hook is overridden.

    Subclasses set ``Config`` (a dataclass of options) and usually override one or two hooks. Keep
    inheritance one level deep: share code through functions, not intermediate base classes.
    """

    Config: ClassVar[type] = NoOptions
    name: ClassVar[str] = ""

    def __init__(self, clip: Clip, config: Any, label_smoothing: float = 0.0):
        self.clip = clip
        self.config = config
        self.label_smoothing = label_smoothing

    # --- what trains -------------------------------------------------------------------------
    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs the optimizer updates. Default: every parameter of the model."""
        return list(self.clip.model.named_parameters())

    # --- the objective -----------------------------------------------------------------------
    def loss(self, batch: Batch, model: nn.Module) -> LossOutput:
        """CLIP contrastive loss over the whole mixed batch."""
        img, txt, scale = clip_features(model, batch)
        loss = clip_contrastive_loss(img, txt, scale, self.label_smoothing)
        return LossOutput(loss, {"clip": loss.detach()})

    # --- task hooks ----------------------------------------------------------------------------
    def begin_task(self, task: TaskInfo) -> None:
        """Called before a task's first step."""

    def end_task(self, task: TaskInfo) -> None:
        """Called after a task's last step, before evaluation."""

    def after_step(self, batch: Batch, step: int) -> None:
        """Optional per-step hook (online EMA, SI, reservoirs). Must stay on the device: no syncs."""

    def extra_cost(self, task: TaskInfo) -> HookCost:
        """Compute of this task's hooks, charged to the budget before its steps are set."""
        return HookCost()

    # --- weights -------------------------------------------------------------------------------
    def training_weights(self) -> dict[str, torch.Tensor] | None:
        """Weights the next task trains from; None = keep the model as it is."""
        return None

    def deploy_weights(self) -> dict[str, torch.Tensor] | None:
        """Weights to evaluate and ship; None = the model as it is.

        Keys: the model's, or for a method that adds modules to the model (PEFT adapters) the base
        architecture's, with the added modules merged in (see :meth:`deploy_model`).
        """
        return None

    def deploy_model(self, weights: dict[str, torch.Tensor]) -> nn.Module:
        """A model holding ``weights`` (from :meth:`deploy_weights`), to evaluate; the model is untouched.

        Default: a copy of the model with ``weights`` loaded. Methods that add modules return the plain
        base architecture instead.
        """
        model = copy.deepcopy(self.clip.model)
        model.load_state_dict(weights)
        return model

    # --- optimizer (optional) -------------------------------------------------------------------
    def build_optimizer(
        self, named_params: list[tuple[str, nn.Parameter]], lr: float, optim_cfg: Any
    ) -> torch.optim.Optimizer | None:
        """The method's own optimizer for ``named_params`` (e.g. GaLore's projected AdamW).

        ``optim_cfg`` is a :class:`fif.train.loop.OptimConfig`. Default None: the runner's
        :func:`fif.train.loop.build_optimizer` (AdamW).
        """
        return None

    def optimizer_state_bytes(self) -> float | None:
        """Bytes of optimizer state a step holds, for the budget's memory estimate.

        Default None: AdamW's two moments per trainable element. A method with its own optimizer
        (:meth:`build_optimizer`) reports its own, so its memory advantage shows in the MAFs.
        """
        return None

    # --- resume --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything beyond the model weights needed for exact resume (tensors or JSON-able values)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"method {self.name!r} has no state, but the checkpoint holds keys {sorted(state)}")


# ----------------------------------------------------------------------------------------------
# Registry

_METHODS: dict[str, type[UpdateMethod]] = {}


def register_method(name: str) -> Callable[[type[UpdateMethod]], type[UpdateMethod]]:
    """Class decorator: register an UpdateMethod under ``name``. A duplicate name fails at import."""

    def wrap(cls: type[UpdateMethod]) -> type[UpdateMethod]:
        if name in _METHODS:
            raise ValueError(f"update method {name!r} is registered twice ({_METHODS[name].__module__} and {cls.__module__})")
        if not dataclasses.is_dataclass(cls.Config):
            raise TypeError(f"{cls.__name__}.Config must be a dataclass")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def registered_methods() -> dict[str, type[UpdateMethod]]:
    return dict(_METHODS)


def method_class(name: str) -> type[UpdateMethod]:
    if name not in _METHODS:
        close = difflib.get_close_matches(name, list(_METHODS), n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"unknown method.name {name!r}{hint} Valid: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def method_config_problems(name: str, options: dict) -> list[str]:
    """Problems with ``method.name`` and its options (empty if valid)."""

    if name not in _METHODS:
        try:
            method_class(name)
        except KeyError as e:
            return [str(e.args[0])]
    cls = _METHODS[name]
    problems: list[str] = []
    if not dataclasses.fields(cls.Config):
        return [f"method {name!r} takes no options, got method.{', method.'.join(sorted(options))}"] if options else []
    from_dict(cls.Config, options, "method", problems)
    return problems


def build_method(name: str, options: dict, clip: Clip, label_smoothing: float = 0.0) -> UpdateMethod:
    """Construct method ``name`` with validated ``options`` for ``clip``."""

    cls = method_class(name)
    problems: list[str] = []
    cfg = from_dict(cls.Config, options, "method", problems)
    if problems:
        raise ConfigError(problems)
    return cls(clip, cfg, label_smoothing=label_smoothing)


def freeze_all_but(model: nn.Module, trainable: list[tuple[str, nn.Parameter]]) -> int:
    """Set requires_grad so that exactly ``trainable`` get gradients; returns their element count."""
    keep = {id(p) for _, p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return sum(p.numel() for _, p in trainable)
