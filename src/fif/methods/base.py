"""The UpdateMethod contract: a Protocol of hooks, the default implementation methods build on, and the
optional capabilities a method may declare.

A method is constructed once per run as ``cls(clip, config)`` with the model (it may inject adapters into
it) and its own config dataclass; the runner then hands it the CLIP loss's settings (``clip_loss``) and
drives it through the hooks, in this order, for every task::

    extra_cost(task) → begin_task(task) → training_weights()
        → [loss(batch, model) → backward → step → after_step(batch, step)] × steps
        → end_task(task) → deploy_weights() → evaluate

Methods return values (losses, costs, weights); they never reach into the runner. Registering a method
by name: :mod:`fif.methods.registry`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Protocol, runtime_checkable

import torch
from torch import nn

from fif.core.optim import OptimConfig, build_optimizer
from fif.data.batch import Batch
from fif.model.clip import Clip
from fif.model.loss import ClipLoss, clip_features

# ----------------------------------------------------------------------------------------------
# What a hook is told about a task


class TaskData(Protocol):
    """The data a task hook may read, on the model's device.

    The runner's implementation: :class:`fif.runner.task.RunTaskData`.
    """

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """One pass over the current task's training data only, in a seeded order of its own (same seed,
        same batches), each row labelled with its concept (``Batch.labels``, an index into
        ``TaskInfo.concepts``); e.g. EWC's Fisher pass, GDumb's memory."""
        ...

    def reference_texts(self, n: int) -> list[str]:
        """n captions of the pretraining pool drawn with the run seed (same n, same captions; fewer when
        the pool is smaller, none without a pool); e.g. ZSCL's reference set."""
        ...


@dataclass
class TaskInfo:
    """What a method may know about a task.

    ``num_samples`` is the task's training-set size (0 = unknown), so ``extra_cost`` can size a pass
    before it runs. ``seed`` is the run seed: methods that draw (replay reservoirs, GDumb's memory) seed
    from it and the task index. ``data`` is the task's data (:class:`TaskData`), None where no data is at
    hand (``fif budget``, unit tests).
    """

    index: int  # 0-based task index
    num_tasks: int
    concepts: list[str]  # "DATASET+++classname"
    steps: int  # optimizer steps this task gets from the budget
    num_samples: int = 0  # training samples of the task's concepts (0 = unknown)
    seed: int = 0  # the run seed
    data: TaskData | None = field(default=None, repr=False, compare=False)


# ----------------------------------------------------------------------------------------------
# What hooks return


@dataclass
class LossOutput:
    """The total loss to backpropagate and its named parts (detached, for logging)."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class HookCost:
    """Compute a task hook spends outside the training steps (charged to the budget).

    ``samples``: the samples a pass over task data reads (0 = not such a pass); the paper's accounting
    charges such a pass per step as ceil(samples / batch) training steps (FiF Tab. 4's EWC).
    """

    flops: float = 0.0
    peak_memory_bytes: float = 0.0
    samples: int = 0


@dataclass
class NoOptions:
    """Config of a method without options."""


# ----------------------------------------------------------------------------------------------
# The contract


@runtime_checkable
class UpdateMethod(Protocol):
    """What the runner, the training loop and the budget call on a method (ARCHITECTURE.md).

    Build on :class:`BaseMethod`, which implements every hook as plain fine-tuning; the capabilities
    beyond these hooks are optional (:class:`BuildsOptimizer`, :class:`BuildsDeployModel`).
    """

    name: ClassVar[str]  # set by ``register_method``
    Config: ClassVar[type]  # the options dataclass (``method.<field>=...``)
    clip_loss: ClipLoss  # the CLIP loss's settings; the runner's replace the default before any hook

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs the optimizer updates, all registered in the model."""
        ...

    def loss(self, batch: Batch, model: nn.Module) -> LossOutput:
        """The training objective on one mixed batch. ``model`` is the model, a meta-device copy of it
        (the budget counts a step's FLOPs there) or a wrapper (DDP); read weights through it."""
        ...

    def begin_task(self, task: TaskInfo) -> None:
        """Called before a task's first step."""
        ...

    def end_task(self, task: TaskInfo) -> None:
        """Called after a task's last step, before evaluation."""
        ...

    def after_step(self, batch: Batch, step: int) -> None:
        """Called after each optimizer step (0-based ``step``). Device ops only: no host sync."""
        ...

    def extra_cost(self, task: TaskInfo) -> HookCost:
        """Compute of this task's hooks, charged to the budget before its steps are set."""
        ...

    def training_weights(self) -> dict[str, torch.Tensor] | None:
        """Weights the task trains from (asked once, after ``begin_task``); None = the model as it is."""
        ...

    def deploy_weights(self) -> dict[str, torch.Tensor] | None:
        """Weights to evaluate and ship; None = the model as it is."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything beyond the model weights needed for exact resume (tensors or JSON-able values)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; called before the model's weights are loaded."""
        ...


# ----------------------------------------------------------------------------------------------
# Optional capabilities: a method declares one by defining all of its methods (checked at registration)


@runtime_checkable
class BuildsOptimizer(Protocol):
    """A method with its own optimizer (GaLore's projected AdamW) instead of :func:`fif.core.optim.build_optimizer`.

    It also reports the optimizer's state size, so the budget's memory estimate sees its advantage.
    """

    def build_optimizer(
        self, named_params: list[tuple[str, nn.Parameter]], lr: float, optim_cfg: OptimConfig
    ) -> torch.optim.Optimizer:
        """The optimizer over ``named_params`` (the trainable parameters, or the budget's copies of them)."""
        ...

    def optimizer_state_bytes(self) -> float:
        """Bytes of optimizer state a step holds (the budget's memory estimate)."""
        ...


@runtime_checkable
class BuildsDeployModel(Protocol):
    """A method whose model is not the base architecture (PEFT adapters): its ``deploy_weights`` have the
    base architecture's keys, and it builds the plain model that holds them."""

    def deploy_model(self, weights: dict[str, torch.Tensor]) -> nn.Module:
        """A new plain model holding ``weights``, to evaluate; the method's model is untouched."""
        ...


@runtime_checkable
class CountedAsMergedAdapters(Protocol):
    """An adapter method that FiF's Tab. 4 counted in the reference's form (``budget.accounting=paper``).

    The reference formed W' = W + s·B·A every step and multiplied by W', so the dense weight gradient of
    every adapted weight was computed (and counted), plus 6·r·d_out·d_in FLOPs for forming B·A and its two
    gradient matmuls; fif's adapters run unmerged (x·Aᵀ·Bᵀ), which is cheaper.
    """

    def paper_merged_step(self, model: nn.Module) -> tuple[nn.Module, list[str], int]:
        """The reference's step for ``model`` (a copy of the method's model, e.g. on the meta device).

        Returns:
            The base architecture of ``model``, the names of its weights the reference merged adapters
            into, and the adapter rank r.
        """
        ...


CAPABILITIES: tuple[type, ...] = (BuildsOptimizer, BuildsDeployModel, CountedAsMergedAdapters)


def capability_members(capability: type) -> list[str]:
    """The method names a capability (or the contract) consists of, in definition order."""
    return [n for n, v in vars(capability).items() if callable(v) and not n.startswith("_")]


def optimizer_for(
    method: UpdateMethod, named_params: list[tuple[str, nn.Parameter]], lr: float, optim_cfg: OptimConfig
) -> torch.optim.Optimizer:
    """The method's own optimizer (:class:`BuildsOptimizer`), else fif's AdamW/SGD for ``named_params``."""
    if isinstance(method, BuildsOptimizer):
        return method.build_optimizer(named_params, lr, optim_cfg)
    return build_optimizer(named_params, lr, optim_cfg)


def optimizer_state_bytes_of(method: UpdateMethod) -> float | None:
    """The optimizer state bytes a :class:`BuildsOptimizer` method reports; None = AdamW's two moments."""
    return method.optimizer_state_bytes() if isinstance(method, BuildsOptimizer) else None


def tensor_bytes(value: Any) -> int:
    """Bytes of the distinct tensors in ``value`` (nested dicts, lists and tuples; anything else counts 0)."""
    found: dict[int, int] = {}

    def walk(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            found[id(v)] = v.numel() * v.element_size()
        elif isinstance(v, dict):
            for item in v.values():
                walk(item)
        elif isinstance(v, (list, tuple)):
            for item in v:
                walk(item)

    walk(value)
    return sum(found.values())


def method_state_bytes(method: UpdateMethod) -> float:
    """Device bytes a method holds beyond the model, its gradients and optimizer state (Fisher/Ω and
    anchors, SI's path integral, teachers, replay buffers), in the steady state of a run (after a task).

    The method's own ``state_bytes()`` where it defines one (state that appears only after the first task,
    or is not in its checkpoint state, such as a teacher rebuilt from θ0), else the tensors of its
    ``state_dict()``. Counted into a step's peak memory, so into the MAF memory multiplier (FiF Tab. 4:
    EWC 1.0132, SI 1.0013).
    """
    own = getattr(method, "state_bytes", None)
    return float(own() if callable(own) else tensor_bytes(method.state_dict()))


def deploy_model_for(method: UpdateMethod, model: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """A new model holding ``weights`` (from ``deploy_weights`` or a merge of them), to evaluate and ship.

    The method's own plain model (:class:`BuildsDeployModel`), else a copy of ``model`` with ``weights``
    loaded; ``model`` is untouched.
    """
    if isinstance(method, BuildsDeployModel):
        return method.deploy_model(weights)
    deployed = copy.deepcopy(model)
    deployed.load_state_dict(weights)
    return deployed


# ----------------------------------------------------------------------------------------------
# The default implementation


class BaseMethod:
    """The default implementation of :class:`UpdateMethod`: fine-tuning of every parameter with the CLIP
    loss, hooks that do nothing, the model's own weights, no state.

    Subclasses set ``Config`` (a dataclass of options) and override the one or two hooks they need. Keep
    inheritance one level deep: share code through functions or held objects, not intermediate classes.
    """

    Config: ClassVar[type] = NoOptions
    name: ClassVar[str] = ""
    # Why the method decides the weights each task trains from ("" = it does not): a merge preset's
    # ``merge.init`` then yields to it and an explicit one is refused (fif.config.composition).
    owns_start_weights: ClassVar[str] = ""
    # Options that differ from the defaults in FiF's own runs (`fif budget --accounting paper`, the fif preset)
    paper_options: ClassVar[dict[str, Any]] = {}
    # True when the method can train a sharded copy of the model (train.distributed=fsdp): its loss only
    # calls the model it is given on the step's batch, and no hook or state reads the weights mid-task.
    shardable: ClassVar[bool] = False
    clip_loss: ClipLoss = ClipLoss()  # replaced by the runner's (build_method); read it when the loss runs

    def __init__(self, clip: Clip, config: Any):
        self.clip = clip
        self.config = config

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Every parameter of the model."""
        return list(self.clip.model.named_parameters())

    def loss(self, batch: Batch, model: nn.Module) -> LossOutput:
        """The CLIP contrastive loss over the whole mixed batch."""
        img, txt, scale = clip_features(model, batch)
        loss = self.clip_loss(img, txt, scale)
        return LossOutput(loss, {"clip": loss.detach()})

    def begin_task(self, task: TaskInfo) -> None:
        """Nothing."""

    def end_task(self, task: TaskInfo) -> None:
        """Nothing."""

    def after_step(self, batch: Batch, step: int) -> None:
        """Nothing."""

    def extra_cost(self, task: TaskInfo) -> HookCost:
        """No compute outside the steps."""
        return HookCost()

    def training_weights(self) -> dict[str, torch.Tensor] | None:
        """None: the task trains from the model as it is."""
        return None

    def deploy_weights(self) -> dict[str, torch.Tensor] | None:
        """None: the model as it is."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """No state."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Accepts only the empty state.

        Raises:
            ValueError: the checkpoint holds state this method does not have.
        """
        if state:
            raise ValueError(f"method {self.name!r} has no state, but the checkpoint holds keys {sorted(state)}")


def freeze_all_but(model: nn.Module, trainable: list[tuple[str, nn.Parameter]]) -> int:
    """Set requires_grad so that exactly ``trainable`` get gradients, and keep the running statistics of
    frozen BatchNorm layers frozen (:func:`freeze_batchnorm_statistics`); returns the trainable element count."""
    keep = {id(p) for _, p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    freeze_batchnorm_statistics(model)
    return sum(p.numel() for _, p in trainable)


def batchnorm_is_frozen(module: nn.Module) -> bool:
    """True for a BatchNorm layer with a parameter that gets no gradient (a locked tower, BitFit's frozen
    scale, LoRA's base model): its running statistics are part of the frozen model and must not move."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and any(
        not p.requires_grad for p in module.parameters(recurse=False)
    )


def _eval_if_frozen(module: nn.Module, inputs: Any) -> None:
    if module.training and batchnorm_is_frozen(module):
        module.training = False


def freeze_batchnorm_statistics(model: nn.Module) -> None:
    """Make every frozen BatchNorm layer of ``model`` run in eval mode (running statistics used, never
    updated), whatever ``model.train()`` says.

    A forward pre-hook decides at each call from the layer's ``requires_grad`` flags, so the rule holds
    wherever ``train()`` is called (the training loop, a pass that restores ``train(was_training)``), in
    copies of the model (``deepcopy`` keeps hooks) and after the flags change. Idempotent.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not getattr(module, "_fif_bn_hook", False):
            module.register_forward_pre_hook(_eval_if_frozen)
            module._fif_bn_hook = True
