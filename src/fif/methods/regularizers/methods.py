"""EWC, MAS and SI: the registered methods (the math is in :mod:`fif.methods.regularizers`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from fif.data.batch import Batch
from fif.methods.base import BaseMethod, HookCost, LossOutput, TaskInfo
from fif.methods.common import check_positive
from fif.methods.registry import register_method
from fif.methods.regularizers.importance import (
    Anchor,
    PassCost,
    _check_gamma,
    _loss_with_penalty,
    _tensors_like,
    importance_pass,
    output_norm_objective,
    pass_samples,
)
from fif.model.clip import Clip
from fif.model.loss import clip_features

log = logging.getLogger(__name__)


def is_last(task: TaskInfo) -> bool:
    """True for the stream's last task: an importance pass at its end would serve no later task."""
    return task.index == task.num_tasks - 1


@dataclass
class EwcConfig:
    strength: float = field(
        default=1e5,
        metadata={"help": "λ of the penalty λ/2·Σ F(θ−θ*)² (tune it: docs/methods-regularizers.md)"},
    )
    gamma: float = field(
        default=1.0, metadata={"help": "online EWC decay: F ← γ·F + F_task (1 = sum over tasks, 0 = last task)"}
    )
    fisher_samples: int = field(
        default=256, metadata={"help": "task samples of the Fisher pass, capped by the task's size (FiF: 50000)"}
    )
    fisher_batch_size: int = field(
        default=16, metadata={"help": "batch size of the Fisher pass (the CLIP loss needs in-batch negatives)"}
    )

    def __post_init__(self):
        check_positive("strength", self.strength)
        _check_gamma(self.gamma)
        check_positive("fisher_samples", self.fisher_samples, integer=True)
        check_positive("fisher_batch_size", self.fisher_batch_size, integer=True)
        if self.fisher_batch_size < 2:  # one sample is its own only negative: the CLIP loss and its gradient are 0
            raise ValueError(
                f"method.fisher_batch_size={self.fisher_batch_size}: the Fisher pass takes the CLIP loss's gradient, "
                "which is 0 for a batch of 1 (no negatives); use >= 2 (default 16)"
            )


@register_method("ewc")
class Ewc(BaseMethod):
    """EWC (Kirkpatrick et al. 2017; online): penalty λ/2·Σ F(θ−θ*)², F from a Fisher pass per task end.

    Online accumulation F ← γ·F + F_task (Schwarz et al. 2018); the pass is charged to the budget.
    """

    Config = EwcConfig
    owns_start_weights = "its anchor θ* is the weights the previous task ended with, where the next task starts"
    paper_options = {"fisher_samples": 50_000}  # FiF §4 / Tab. 4

    def __init__(self, clip: Clip, config: EwcConfig):
        super().__init__(clip, config)
        named = self.trainable_parameters()
        self.state = Anchor(named)
        self._cost = PassCost(clip, named, self.fisher_objective)

    def fisher_objective(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """EWC's objective: the CLIP loss as in training (the model's own temperature, the run's ``clip_loss``)."""
        img, txt, scale = clip_features(model, batch)
        return self.clip_loss(img, txt, scale)

    def loss(self, batch: Batch, model: nn.Module) -> LossOutput:
        return _loss_with_penalty(super().loss(batch, model), self.state.penalty(), self.config.strength / 2)

    def end_task(self, task: TaskInfo) -> None:
        """F ← γ·F + Fisher of this task at the current weights; θ* ← the current weights."""
        named = list(self.state.params.items())
        if is_last(task):  # no later task is penalised: the pass would be wasted (and is not charged)
            pass
        elif task.data is None:
            log.warning("ewc: task %d came without its data (TaskInfo.data); the Fisher is not updated", task.index)
        else:
            cfg = self.config
            fisher, _ = importance_pass(
                self.clip.model, named, task.data.batches(cfg.fisher_batch_size),
                pass_samples(cfg.fisher_samples, task), self.fisher_objective, torch.square,
            )
            self.state.accumulate(fisher, cfg.gamma)
        self.state.set_anchor()

    def state_bytes(self) -> float:
        """The Fisher (fp32) and the anchor θ*, held from the first task's end on."""
        fp32, native = self.state.bytes_per_copy()
        return float(fp32 + native)

    def extra_cost(self, task: TaskInfo) -> HookCost:
        """The Fisher pass: forward + backward over ``min(fisher_samples, task size)`` samples; 0 on the last task."""
        if is_last(task):
            return HookCost()
        return self._cost(pass_samples(self.config.fisher_samples, task), self.config.fisher_batch_size)

    def state_dict(self) -> dict[str, Any]:
        return self.state.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state.load_state_dict(state, self.name)


# ----------------------------------------------------------------------------------------------
# MAS


@dataclass
class MasConfig:
    strength: float = field(
        default=1.0,
        metadata={"help": "λ of the penalty λ·Σ Ω(θ−θ*)² (tune it: docs/methods-regularizers.md)"},
    )
    gamma: float = field(
        default=1.0, metadata={"help": "online decay: Ω ← γ·Ω + Ω_task (1 = sum over tasks, 0 = last task only)"}
    )
    importance_samples: int = field(
        default=256, metadata={"help": "task samples of the importance pass, capped by the task's size"}
    )
    importance_batch_size: int = field(
        default=1,
        metadata={"help": "batch size of the importance pass: 1 = MAS's per-sample |gradient|; larger is faster "
                  "but takes |mean gradient| ≤ mean |gradient|"},
    )

    def __post_init__(self):
        check_positive("strength", self.strength)
        _check_gamma(self.gamma)
        check_positive("importance_samples", self.importance_samples, integer=True)
        check_positive("importance_batch_size", self.importance_batch_size, integer=True)


@register_method("mas")
class Mas(BaseMethod):
    """MAS (Aljundi et al. 2018): penalty λ·Σ Ω(θ−θ*)², Ω = mean |∂‖f(x)‖²/∂θ| from a pass per task end.

    f: the image and text embeddings before normalisation; the pass is charged to the budget.
    """

    Config = MasConfig
    # FiF runs its importance passes over up to 50,000 task samples (EWC's Fisher pass, Tab. 4); MAS's pass
    # is the same kind of pass, so FiF's setting is the same
    paper_options = {"importance_samples": 50_000}
    owns_start_weights = "its anchor θ* is the weights the previous task ended with, where the next task starts"

    def __init__(self, clip: Clip, config: MasConfig):
        super().__init__(clip, config)
        named = self.trainable_parameters()
        self.state = Anchor(named)
        self._cost = PassCost(clip, named, output_norm_objective)

    def loss(self, batch: Batch, model: nn.Module) -> LossOutput:
        return _loss_with_penalty(super().loss(batch, model), self.state.penalty(), self.config.strength)

    def end_task(self, task: TaskInfo) -> None:
        """Ω ← γ·Ω + importance of this task at the current weights; θ* ← the current weights."""
        named = list(self.state.params.items())
        if is_last(task):  # no later task is penalised: the pass would be wasted (and is not charged)
            pass
        elif task.data is None:
            log.warning("mas: task %d came without its data (TaskInfo.data); Ω is not updated", task.index)
        else:
            cfg = self.config
            omega, _ = importance_pass(
                self.clip.model, named, task.data.batches(cfg.importance_batch_size),
                pass_samples(cfg.importance_samples, task), output_norm_objective, torch.abs,
            )
            self.state.accumulate(omega, cfg.gamma)
        self.state.set_anchor()

    def state_bytes(self) -> float:
        """Ω (fp32) and the anchor θ*, held from the first task's end on."""
        fp32, native = self.state.bytes_per_copy()
        return float(fp32 + native)

    def extra_cost(self, task: TaskInfo) -> HookCost:
        """The importance pass: forward + backward over ``min(importance_samples, task size)`` samples; 0 on the
        last task."""
        if is_last(task):
            return HookCost()
        return self._cost(pass_samples(self.config.importance_samples, task), self.config.importance_batch_size)

    def state_dict(self) -> dict[str, Any]:
        return self.state.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state.load_state_dict(state, self.name)


# ----------------------------------------------------------------------------------------------
# SI


@dataclass
class SiConfig:
    strength: float = field(
        default=100.0,
        metadata={"help": "c of the penalty c·Σ Ω(θ−θ*)² (tune it: docs/methods-regularizers.md)"},
    )
    xi: float = field(default=1e-3, metadata={"help": "damping ξ of Ω += ω/(Δ² + ξ)"})

    def __post_init__(self):
        check_positive("strength", self.strength)
        check_positive("xi", self.xi)


@register_method("si")
class Si(BaseMethod):
    """SI (Zenke et al. 2017): penalty c·Σ Ω(θ−θ*)², Ω from the path integral of the loss along training.

    The path integral ω = −Σ_steps g·Δθ needs each step's gradient g = ∂L/∂θ and update Δθ (Zenke et al.
    2017: the gradient of the loss, before any clipping). The runner frees the gradients
    (``zero_grad(set_to_none=True)``) before ``after_step``, so ``begin_task`` registers a
    ``post_accumulate_grad`` hook on each trainable parameter that keeps a reference to its final ``.grad``,
    the squared norm it has when backward leaves it, and a copy of the weights before the step. Loss
    scaling's unscale and gradient clipping then scale that tensor in place by one factor for all
    parameters, and the loss's own backward hook sees the loss scale S (1 without fp16), so ``after_step``
    recovers ∂L/∂θ = g_final · ‖g_raw‖ / (S·‖g_final‖) without a copy of the gradients, adds
    −∂L/∂θ·(θ − θ_before) to ω on the device (non-finite terms of skipped steps count 0) and drops the
    references. g is the gradient of the whole training loss, penalty included (as in most SI ports; the
    original used the unregularized loss, which would need a second backward).

    Memory beyond the weights: Ω and θ* (kept across tasks), ω and θ_before (during a task).
    """

    Config = SiConfig
    owns_start_weights = "its anchor θ* is the weights the previous task ended with, where the next task starts"

    def __init__(self, clip: Clip, config: SiConfig):
        super().__init__(clip, config)
        self.state = Anchor(self.trainable_parameters())
        self.omega: dict[str, torch.Tensor] | None = None  # the running path integral (during a task)
        self._before: dict[str, torch.Tensor] = {}  # θ before the step (filled by the gradient hooks)
        self._grads: dict[str, torch.Tensor] = {}  # references to this step's final gradients
        self._raw_sq: dict[str, torch.Tensor] = {}  # their squared norms as backward left them (before clipping)
        self._loss_scale: torch.Tensor | None = None  # d(backpropagated root)/d(loss): fp16's loss scale, else 1
        self._hooked: set[int] = set()

    def loss(self, batch: Batch, model: nn.Module) -> LossOutput:
        out = _loss_with_penalty(super().loss(batch, model), self.state.penalty(), self.config.strength)
        self.watch_loss(out.total)
        return out

    def watch_loss(self, total: torch.Tensor) -> None:
        """Record the factor the backward applies to ``total`` (GradScaler's S; 1 without loss scaling)."""
        if self.omega is not None and total.requires_grad and total.device.type != "meta":
            total.register_hook(self._record_scale)

    def _record_scale(self, grad: torch.Tensor) -> None:
        self._loss_scale = grad.detach().float()

    # --- the path integral ----------------------------------------------------------------------
    def _track(self) -> None:
        """Start ω (if not running) and hook the trainable parameters (once per parameter)."""
        named = self.state.params
        if self.omega is None:
            self.omega = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in named.items()}
        for n, p in named.items():
            self._before.setdefault(n, torch.empty_like(p))
            if id(p) not in self._hooked:
                p.register_post_accumulate_grad_hook(self._grad_hook(n))
                self._hooked.add(id(p))

    def _grad_hook(self, name: str) -> Callable[[torch.Tensor], None]:
        def capture(p: torch.Tensor) -> None:
            if self.omega is None:  # not inside a task
                return
            if name not in self._grads:  # first accumulation of this step: the weights before the step
                self._before[name].copy_(p.detach())
            self._grads[name] = p.grad
            self._raw_sq[name] = p.grad.detach().float().square().sum()  # the last accumulation's is final

        return capture

    def begin_task(self, task: TaskInfo) -> None:
        if self.state.anchor is None:  # θ at the start of the first task (later: the last task's end)
            self.state.set_anchor()
        self._track()

    def after_step(self, batch: Batch, step: int) -> None:
        """ω += −g·Δθ for the step just taken (device ops only, no sync)."""
        if self.omega is None:
            return
        with torch.no_grad():
            factor = self._unclip_factor()
            for n, g in self._grads.items():
                term = (g.float() * factor) * (self.state.params[n].detach().float() - self._before[n].float())
                self.omega[n].sub_(torch.nan_to_num(term, nan=0.0, posinf=0.0, neginf=0.0))
        self._grads, self._raw_sq, self._loss_scale = {}, {}, None  # drop the references: gradients freed here

    def _unclip_factor(self) -> torch.Tensor | float:
        """‖g_raw‖ / (S·‖g_final‖): turns the gradient the optimizer used back into ∂L/∂θ (device scalar)."""
        if not self._grads:
            return 1.0
        raw = torch.stack([self._raw_sq[n] for n in self._grads]).sum()
        final = torch.stack([g.detach().float().square().sum() for g in self._grads.values()]).sum()
        ratio = torch.where(final > 0, (raw / final).sqrt(), torch.ones_like(raw))
        return ratio / self._loss_scale if self._loss_scale is not None else ratio

    def end_task(self, task: TaskInfo) -> None:
        """Ω += max(ω/(Δ² + ξ), 0) with Δ = θ − θ*; then θ* ← θ and ω is reset."""
        if self.omega is not None:
            new = {}
            with torch.no_grad():
                for n, p in self.state.params.items():
                    delta = p.detach().float() - self.state.anchor[n].float()
                    # A negative path integral (noise, weight decay) would reward moving away: clip at 0.
                    new[n] = (self.omega[n] / (delta.square() + self.config.xi)).clamp_(min=0.0)
            self.state.accumulate(new, 1.0)
        self.state.set_anchor()
        self.omega, self._before, self._grads, self._raw_sq = None, {}, {}, {}

    def state_bytes(self) -> float:
        """Ω and ω (fp32), the anchor θ* and θ before the step: held during every task after the first."""
        fp32, native = self.state.bytes_per_copy()
        return float(2 * fp32 + 2 * native)

    # --- resume ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**self.state.state_dict(), "omega": self.omega}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state.load_state_dict(state, self.name)
        if "omega" not in state:
            raise ValueError(f"method 'si': checkpoint state lacks 'omega' (got keys {sorted(state)})")
        omega = _tensors_like(state["omega"], list(self.state.params.items()), "si omega")
        self.omega = None
        if omega is not None:  # saved inside a task: keep integrating where it stopped
            self._track()
            self.omega = {n: t.float() for n, t in omega.items()}
