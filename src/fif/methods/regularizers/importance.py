"""The machinery the weight regularizers share: the quadratic penalty, the anchor, importance passes and their cost.

See :mod:`fif.methods.regularizers` for the methods and the math.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

import torch
from torch import nn

from fif.core.flops import count_flops, meta_copy
from fif.data.batch import Batch, synthetic_batch
from fif.methods.base import HookCost, LossOutput, TaskInfo
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

    def bytes_per_copy(self) -> tuple[int, int]:
        """(bytes of one fp32 copy, bytes of one copy in the parameters' dtypes) of the trainable weights."""
        numel = sum(p.numel() for p in self.params.values())
        return 4 * numel, sum(p.numel() * p.element_size() for p in self.params.values())

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
        return HookCost(flops=float(flops), samples=samples)


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
