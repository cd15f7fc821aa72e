"""Weight regularizers: EWC, SI and MAS keep important weights close to where earlier tasks left them.

All three add a quadratic penalty to the CLIP loss on later tasks,

    L(θ) = L_CLIP(θ) + s · Σ_i Ω_i (θ_i − θ*_i)²

with θ* the weights at the end of the last task and Ω a per-weight importance, and differ in how Ω is
estimated (FiF §4, "regularization"):

- **EWC** (Kirkpatrick et al. 2017; online, Schwarz et al. 2018): Ω = F, the diagonal Fisher of the CLIP
  loss over up to ``fisher_samples`` of the task's training samples, at the model's own temperature;
  F ← γ·F + F_t; s = λ/2.
- **SI** (Zenke et al. 2017): Ω ← Ω + ω/(Δ² + ξ), with ω = −Σ_steps g·Δθ the path integral of the
  training loss along the task's trajectory (accumulated in ``after_step``, on the device) and Δ the
  task's total change of each weight; s = c.
- **MAS** (Aljundi et al. 2018): Ω = mean |∂‖f(x)‖²/∂θ| over the task's samples, with f the image and text
  embeddings before normalisation (MAS's label-free importance); Ω ← γ·Ω + Ω_t; s = λ.

Unlike the reference pipeline, the learned weights are kept at every task end (deploy = the model as it
is); only the importance and the anchor are stored (one copy each of the trainable weights, on the
device, not one per task). EWC's and MAS's passes are charged to the budget (:meth:`extra_cost`), so
they leave fewer training steps. See docs/methods-regularizers.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from fif.methods.base import (
    Batch,
    HookCost,
    LossOutput,
    TaskInfo,
    UpdateMethod,
    clip_contrastive_loss,
    clip_features,
    register_method,
)
from fif.methods.common import check_positive
from fif.model.clip import Clip

log = logging.getLogger(__name__)

Objective = Callable[[nn.Module, Batch], torch.Tensor]


# ----------------------------------------------------------------------------------------------
# The penalty


class _QuadraticPenalty(torch.autograd.Function):
    """Σ_i Σ Ω_i ⊙ (θ_i − θ*_i)², whose backward saves no activations.

    Through plain autograd every (θ − θ*) would be kept for the backward: one more copy of the trainable
    weights per step. Here the gradient 2·Ω ⊙ (θ − θ*) is recomputed parameter by parameter in the
    backward, from tensors that are held anyway.
    """

    @staticmethod
    def forward(ctx, importance: list[torch.Tensor], anchor: list[torch.Tensor], *params: torch.Tensor):
        ctx.importance, ctx.anchor = importance, anchor
        ctx.save_for_backward(*params)
        dtype = torch.promote_types(params[0].dtype, torch.float32)  # sum in at least fp32
        total = params[0].new_zeros((), dtype=dtype)
        for w, a, p in zip(importance, anchor, params):
            total += (w * (p - a).square()).sum(dtype=dtype)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        params = ctx.saved_tensors
        grads = [(2.0 * grad) * w * (p - a) for w, a, p in zip(ctx.importance, ctx.anchor, params)]
        return (None, None, *grads)


class Anchor:
    """The importance Ω and the anchor θ* of a method's trainable weights, by name (one copy each).

    ``importance`` is None until the first task ended (no penalty on the first task). The penalty reads the
    parameters themselves, not a model passed in: the training step may hand the method a wrapper (DDP,
    gradient accumulation's cached forward) whose parameter names differ, but the tensors are these.
    """

    def __init__(self, named: list[tuple[str, nn.Parameter]]):
        self.params = dict(named)
        self.importance: dict[str, torch.Tensor] | None = None
        self.anchor: dict[str, torch.Tensor] | None = None

    def penalty(self) -> torch.Tensor | None:
        """Σ Ω (θ − θ*)² over the parameters; None before the first task ended."""
        if self.importance is None or self.anchor is None:
            return None
        names = list(self.params)
        return _QuadraticPenalty.apply(
            [self.importance[n] for n in names], [self.anchor[n] for n in names], *[self.params[n] for n in names]
        )

    def set_anchor(self) -> None:
        """θ* ← the current weights (in place once allocated)."""
        with torch.no_grad():
            if self.anchor is None:
                self.anchor = {n: p.detach().clone() for n, p in self.params.items()}
            else:
                for n, p in self.params.items():
                    self.anchor[n].copy_(p)

    def accumulate(self, new: dict[str, torch.Tensor], gamma: float) -> None:
        """Ω ← γ·Ω + Ω_new (online accumulation; Ω_new is taken over when there is no Ω yet)."""
        if self.importance is None:
            self.importance = new
            return
        with torch.no_grad():
            for n, w in self.importance.items():
                w.mul_(gamma).add_(new[n])

    def state_dict(self) -> dict[str, Any]:
        return {"importance": self.importance, "anchor": self.anchor}

    def load_state_dict(self, state: dict[str, Any], method: str) -> None:
        """Load importance and anchor onto the parameters' devices; shapes and names must match.

        Raises:
            ValueError: a key is missing, or a tensor does not fit the model's parameter.
        """
        for key in ("importance", "anchor"):
            if key not in state:
                raise ValueError(f"method {method!r}: checkpoint state lacks {key!r} (got keys {sorted(state)})")
            setattr(self, key, _tensors_like(state[key], list(self.params.items()), f"{method} {key}"))


def _tensors_like(
    tensors: dict[str, torch.Tensor] | None, named: list[tuple[str, nn.Parameter]], what: str
) -> dict[str, torch.Tensor] | None:
    """``tensors`` checked against ``named`` (same names and shapes), moved to each parameter's device."""
    if tensors is None:
        return None
    expected = {n: p for n, p in named}
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise ValueError(
            f"{what}: the checkpoint's parameters do not match the model's trainable ones "
            f"(missing {missing[:3]}, unexpected {extra[:3]}); resume with the same model and method"
        )
    out = {}
    for n, t in tensors.items():
        p = expected[n]
        if tuple(t.shape) != tuple(p.shape):
            raise ValueError(f"{what}: {n} has shape {tuple(t.shape)} in the checkpoint, {tuple(p.shape)} in the model")
        out[n] = t.to(device=p.device, dtype=p.dtype).clone()
    return out


# ----------------------------------------------------------------------------------------------
# Importance passes (EWC, MAS) and what they cost


def clip_objective(label_smoothing: float = 0.0) -> Objective:
    """EWC's objective: the CLIP loss at the model's own temperature 1/exp(logit_scale), as in training."""

    def objective(model: nn.Module, batch: Batch) -> torch.Tensor:
        img, txt, scale = clip_features(model, batch)
        return clip_contrastive_loss(img, txt, scale, label_smoothing)

    return objective


def output_norm_objective(model: nn.Module, batch: Batch) -> torch.Tensor:
    """MAS's objective: mean over the batch of ‖f_img(x)‖² + ‖f_txt(t)‖², embeddings before normalisation.

    (CLIP's embeddings are L2-normalised for the loss; the norm of a normalised vector has no gradient.)
    """
    img = model.encode_image(batch.images, normalize=False)
    txt = model.encode_text(batch.tokens, normalize=False)
    return img.float().square().sum(-1).mean() + txt.float().square().sum(-1).mean()


def importance_pass(
    model: nn.Module,
    named: list[tuple[str, nn.Parameter]],
    batches: Iterable[Batch],
    max_samples: int,
    objective: Objective,
    reduce: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[dict[str, torch.Tensor], int]:
    """Sample-weighted mean over batches of ``reduce(∂objective(batch)/∂θ)``, over up to ``max_samples``.

    EWC: ``reduce = square`` (diagonal empirical Fisher of the batch loss); MAS: ``reduce = abs``. The
    model runs in eval mode (BatchNorm uses its running statistics and is not updated; no dropout), and
    gradients come from ``torch.autograd.grad``, so no ``.grad`` is touched.

    Returns:
        The per-parameter mean (zeros where a parameter gets no gradient) and the samples used.
    """
    totals = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in named}
    params = [p for _, p in named]
    seen = 0
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for batch in batches:
                if seen >= max_samples:
                    break
                take = min(len(batch), max_samples - seen)
                if take < len(batch):
                    batch = Batch(batch.images[:take], batch.tokens[:take], batch.source[:take])
                grads = torch.autograd.grad(objective(model, batch), params, allow_unused=True)
                for (n, _), g in zip(named, grads):
                    if g is not None:
                        totals[n].add_(reduce(g.float()), alpha=take)
                seen += take
    finally:
        model.train(was_training)
    if seen:
        for t in totals.values():
            t.div_(seen)
    return totals, seen


def pass_samples(wanted: int, task: TaskInfo) -> int:
    """Samples an importance pass reads: ``wanted``, capped by the task's size when it is known."""
    return min(wanted, task.num_samples) if task.num_samples > 0 else wanted


class PassCost:
    """FLOPs of an importance pass of n samples at batch b: ⌊n/b⌋ full batches and one partial batch,
    each a forward + backward of the pass's objective, counted with :func:`fif.budget.count_flops` on a
    meta copy of the model in eval mode, as the pass runs (no compute, no weights; cached by batch size).

    Memory: reported as 0, i.e. charged at full fine-tuning's step memory (multiplier 1, see
    :func:`fif.budget.hook_cost_mafs`), which is also what these methods' training steps are charged: the
    run holds the device at its peak, and a pass at a smaller batch does not make that peak smaller.
    """

    def __init__(self, clip: Clip, named: list[tuple[str, nn.Parameter]], objective: Objective):
        self._clip, self._named, self._objective = clip, named, objective
        self._flops: dict[int, int] = {}

    def batch_flops(self, batch_size: int) -> int:
        """Forward + backward FLOPs of one pass batch of ``batch_size`` samples."""
        if batch_size not in self._flops:
            from fif.budget import count_flops, meta_copy, synthetic_batch

            model, copies = meta_copy(self._clip.model)
            model.eval()
            params = [copies[id(p)].requires_grad_() for _, p in self._named]
            batch = synthetic_batch(self._clip, batch_size, "meta")
            self._flops[batch_size] = count_flops(
                lambda: torch.autograd.grad(self._objective(model, batch), params, allow_unused=True)
            )
        return self._flops[batch_size]

    def __call__(self, samples: int, batch_size: int) -> HookCost:
        full, rest = divmod(samples, batch_size)
        flops = full * self.batch_flops(batch_size) if full else 0
        if rest:
            flops += self.batch_flops(rest)
        return HookCost(flops=float(flops))


def _check_gamma(gamma: float) -> None:
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"method.gamma must be in [0, 1] (1 = add up every task's importance), got {gamma!r}")


def _loss_with_penalty(base: LossOutput, penalty: torch.Tensor | None, scale: float) -> LossOutput:
    if penalty is None:
        return LossOutput(base.total, {**base.parts, "penalty": torch.zeros((), device=base.total.device)})
    penalty = scale * penalty
    return LossOutput(base.total + penalty, {**base.parts, "penalty": penalty.detach()})


# ----------------------------------------------------------------------------------------------
# EWC


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


@register_method("ewc")
class Ewc(UpdateMethod):
    """EWC (Kirkpatrick et al. 2017; online): penalty λ/2·Σ F(θ−θ*)², F from a Fisher pass per task end.

    Online accumulation F ← γ·F + F_task (Schwarz et al. 2018); the pass is charged to the budget.
    """

    Config = EwcConfig

    def __init__(self, clip: Clip, config: EwcConfig, label_smoothing: float = 0.0):
        super().__init__(clip, config, label_smoothing)
        named = self.trainable_parameters()
        self.state = Anchor(named)
        self._objective = clip_objective(label_smoothing)
        self._cost = PassCost(clip, named, self._objective)

    def loss(self, batch: Batch, model: nn.Module) -> LossOutput:
        return _loss_with_penalty(super().loss(batch, model), self.state.penalty(), self.config.strength / 2)

    def end_task(self, task: TaskInfo) -> None:
        """F ← γ·F + Fisher of this task at the current weights; θ* ← the current weights."""
        named = list(self.state.params.items())
        if task.batches is None:
            log.warning("ewc: task %d came without its data (TaskInfo.batches); the Fisher is not updated", task.index)
        else:
            cfg = self.config
            fisher, _ = importance_pass(
                self.clip.model, named, task.batches(cfg.fisher_batch_size), pass_samples(cfg.fisher_samples, task),
                self._objective, torch.square,
            )
            self.state.accumulate(fisher, cfg.gamma)
        self.state.set_anchor()

    def extra_cost(self, task: TaskInfo) -> HookCost:
        """The Fisher pass: forward + backward over ``min(fisher_samples, task size)`` samples."""
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
class Mas(UpdateMethod):
    """MAS (Aljundi et al. 2018): penalty λ·Σ Ω(θ−θ*)², Ω = mean |∂‖f(x)‖²/∂θ| from a pass per task end.

    f: the image and text embeddings before normalisation; the pass is charged to the budget.
    """

    Config = MasConfig

    def __init__(self, clip: Clip, config: MasConfig, label_smoothing: float = 0.0):
        super().__init__(clip, config, label_smoothing)
        named = self.trainable_parameters()
        self.state = Anchor(named)
        self._cost = PassCost(clip, named, output_norm_objective)

    def loss(self, batch: Batch, model: nn.Module) -> LossOutput:
        return _loss_with_penalty(super().loss(batch, model), self.state.penalty(), self.config.strength)

    def end_task(self, task: TaskInfo) -> None:
        """Ω ← γ·Ω + importance of this task at the current weights; θ* ← the current weights."""
        named = list(self.state.params.items())
        if task.batches is None:
            log.warning("mas: task %d came without its data (TaskInfo.batches); Ω is not updated", task.index)
        else:
            cfg = self.config
            omega, _ = importance_pass(
                self.clip.model, named, task.batches(cfg.importance_batch_size),
                pass_samples(cfg.importance_samples, task), output_norm_objective, torch.abs,
            )
            self.state.accumulate(omega, cfg.gamma)
        self.state.set_anchor()

    def extra_cost(self, task: TaskInfo) -> HookCost:
        """The importance pass: forward + backward over ``min(importance_samples, task size)`` samples."""
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
class Si(UpdateMethod):
    """SI (Zenke et al. 2017): penalty c·Σ Ω(θ−θ*)², Ω from the path integral of the loss along training.

    The path integral ω = −Σ_steps g·Δθ needs each step's gradient g and update Δθ. The runner frees the
    gradients (``zero_grad(set_to_none=True)``) before ``after_step``, so ``begin_task`` registers a
    ``post_accumulate_grad`` hook on each trainable parameter that keeps a reference to its final ``.grad``
    (the tensor that loss scaling's unscale and gradient clipping then modify in place, so ``after_step``
    sees the gradient the optimizer used) and a copy of the weights before the step. ``after_step`` adds
    −g·(θ − θ_before) to ω on the device (non-finite terms of skipped steps count 0) and drops the
    references. g is the gradient of the whole training loss, penalty included (as in most SI ports; the
    original used the unregularized loss, which would need a second backward).

    Memory beyond the weights: Ω and θ* (kept across tasks), ω and θ_before (during a task).
    """

    Config = SiConfig

    def __init__(self, clip: Clip, config: SiConfig, label_smoothing: float = 0.0):
        super().__init__(clip, config, label_smoothing)
        self.state = Anchor(self.trainable_parameters())
        self.omega: dict[str, torch.Tensor] | None = None  # the running path integral (during a task)
        self._before: dict[str, torch.Tensor] = {}  # θ before the step (filled by the gradient hooks)
        self._grads: dict[str, torch.Tensor] = {}  # references to this step's final gradients
        self._hooked: set[int] = set()

    def loss(self, batch: Batch, model: nn.Module) -> LossOutput:
        return _loss_with_penalty(super().loss(batch, model), self.state.penalty(), self.config.strength)

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
            for n, g in self._grads.items():
                term = g.float() * (self.state.params[n].detach().float() - self._before[n].float())
                self.omega[n].sub_(torch.nan_to_num(term, nan=0.0, posinf=0.0, neginf=0.0))
        self._grads = {}  # drop the references: the gradients' memory is freed here

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
        self.omega, self._before, self._grads = None, {}, {}

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
