"""GaLore (Zhao et al., ICML 2024): full-parameter training with AdamW moments in a low-rank gradient projection.

Every parameter trains (as in fine-tuning), but the 2-D attention and MLP weights keep Adam's moments in
a rank-r projection of their gradient, which is where the memory goes: for an m×n weight AdamW holds
2·m·n moment elements, GaLore r·(min(m, n) + 2·max(m, n)) (the projector and two projected moments).
The method declares the :class:`~fif.methods.base.BuildsOptimizer` capability: it supplies its optimizer
(``build_optimizer``) and reports that state (``optimizer_state_bytes``), so the budget gives it the steps
its memory earns.

The optimizer is written here rather than taken from the ``galore-torch`` package: it is short, keeps
the non-projected arithmetic identical to ``torch.optim.AdamW`` (fif's default optimizer), and stores its
state in torch's ``Optimizer.state_dict`` format, which fif's checkpoints already handle.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn

from fif.core.optim import OptimConfig, no_weight_decay
from fif.methods.base import BaseMethod
from fif.methods.peft.config import GaloreOptions
from fif.methods.peft.inject import layer_kind, layer_tower
from fif.methods.registry import register_method


def top_singular_vectors(grad: torch.Tensor, rank: int) -> torch.Tensor:
    """GaLore's projector: the top-``rank`` singular vectors of ``grad`` (m×n) on its shorter side.

    Returns U[:, :r] (m×r) when m ≤ n (left), else V[:, :r] (n×r) (right). A square weight (m = n) is
    projected on the left; the authors' ``galore_torch`` (``proj_type="std"``) takes the right side for
    m ≥ n. Both keep the same state (r·(m + 2n) elements) and are rank-r projections of the gradient;
    the updates differ (docs/methods.md, GaLore).
    """
    u, _, vh = torch.linalg.svd(grad.float(), full_matrices=False)
    p = u[:, :rank] if grad.shape[0] <= grad.shape[1] else vh[:rank].t()
    return p.to(grad.dtype).contiguous()


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW whose param groups with a ``rank`` keep the moments of their 2-D parameters projected.

    For a weight W (m×n) with gradient G in such a group (GaLore, Alg. 2), at step t:

      1. every ``update_proj_gap`` steps: P ← top-r singular vectors of G (:func:`top_singular_vectors`);
      2. R = PᵀG (r×n) if m ≤ n, else R = G·P (m×r);
      3. Adam on R: M ← β1·M + (1−β1)·R, V ← β2·V + (1−β2)·R², N = (M / (1−β1ᵗ)) / (√(V / (1−β2ᵗ)) + ε);
      4. W ← W·(1 − lr·wd) − lr·scale·(P·N if m ≤ n else N·Pᵀ).

    As in the paper, the moments are kept (not rotated) when P changes. Parameters that are not 2-D, or
    with r ≥ min(m, n), get plain AdamW (torch's arithmetic): a full-rank projection saves nothing, and
    since Adam's element-wise moments are not rotation invariant it would only change the optimizer.

    Args:
        params: parameters or param groups; groups may set ``rank``, ``update_proj_gap``, ``scale``.
        lr, betas, eps, weight_decay: AdamW's (decoupled weight decay).
        rank: projection rank r, or None for plain AdamW (the default for groups that do not set it).
        update_proj_gap: steps between projector updates.
        scale: GaLore's α, the scale of the projected-back update.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        rank: int | None = None,
        update_proj_gap: int = 200,
        scale: float = 0.25,
    ):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"GaLoreAdamW: invalid lr={lr}, betas={betas}, eps={eps} or weight_decay={weight_decay}")
        if update_proj_gap < 1 or (rank is not None and rank < 1):
            raise ValueError(f"GaLoreAdamW: rank ({rank}) and update_proj_gap ({update_proj_gap}) must be >= 1")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=rank,
                        update_proj_gap=update_proj_gap, scale=scale)  # fmt: skip
        super().__init__(params, defaults)

    @staticmethod
    def projects(param: torch.Tensor, rank: int | None) -> bool:
        """Whether a parameter of this shape is updated through a rank-``rank`` projection."""
        return rank is not None and param.ndim == 2 and rank < min(param.shape)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise RuntimeError("GaLoreAdamW does not support sparse gradients")
                    self._update(p, group)
        return loss

    def _update(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        beta1, beta2 = group["betas"]
        lr, projected = group["lr"], self.projects(p, group["rank"])
        state["step"] = step = state.get("step", 0) + 1
        grad, left = p.grad, projected and p.shape[0] <= p.shape[1]
        if projected:
            if (step - 1) % group["update_proj_gap"] == 0:
                state["projector"] = top_singular_vectors(grad, group["rank"])
            proj = state["projector"]
            grad = proj.t() @ grad if left else grad @ proj
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        p.mul_(1 - lr * group["weight_decay"])
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**step
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(group["eps"])
        if projected:
            normalized = exp_avg / denom
            update = proj @ normalized if left else normalized @ proj.t()
            p.add_(update, alpha=-lr * group["scale"] / bias_correction1)
        else:
            p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)


def galore_state_elements(param: torch.Tensor, rank: int | None) -> int:
    """Optimizer-state elements of one parameter: r·(min(m,n) + 2·max(m,n)) if projected, else 2·numel."""
    if GaLoreAdamW.projects(param, rank):
        short, long = sorted(param.shape)
        return rank * (short + 2 * long)  # type: ignore[operator]
    return 2 * param.numel()


@register_method("galore")
class Galore(BaseMethod):
    """GaLore (Zhao et al. 2024): all weights train; AdamW moments of attention/MLP weights in a rank-r projection.

    Declares :class:`~fif.methods.base.BuildsOptimizer` (its own optimizer and that optimizer's state size).
    """

    Config = GaloreOptions

    def projected(self, name: str, param: torch.Tensor) -> bool:
        """Whether ``name`` is a 2-D attention/MLP weight of a selected tower that gets a projection."""
        c = self.config
        return (GaLoreAdamW.projects(param, c.rank) and layer_kind(name) in c.targets
                and layer_tower(name) in c.towers)  # fmt: skip

    def build_optimizer(
        self, named_params: list[tuple[str, nn.Parameter]], lr: float, optim_cfg: OptimConfig
    ) -> GaLoreAdamW:
        """GaLoreAdamW: projected AdamW for the target weights, torch's AdamW arithmetic for the rest.

        Weight decay follows fif's rule (:func:`fif.core.optim.no_weight_decay`: matrices only).

        Raises:
            ValueError: ``train.optimizer`` is not adamw.
        """

        if optim_cfg.name != "adamw":
            raise ValueError(
                f"method galore projects AdamW's moments; set train.optimizer=adamw (got {optim_cfg.name!r})"
            )
        named = [(n, p) for n, p in named_params if p.requires_grad]
        c = self.config
        groups = [
            {"params": [p for n, p in named if self.projected(n, p)], "weight_decay": optim_cfg.weight_decay,
             "rank": c.rank},
            {"params": [p for n, p in named if not self.projected(n, p) and not no_weight_decay(n, p)],
             "weight_decay": optim_cfg.weight_decay},
            {"params": [p for n, p in named if not self.projected(n, p) and no_weight_decay(n, p)],
             "weight_decay": 0.0},
        ]  # fmt: skip
        return GaLoreAdamW([g for g in groups if g["params"]], lr=lr, betas=optim_cfg.betas, eps=optim_cfg.eps,
                           update_proj_gap=c.update_proj_gap, scale=c.scale)  # fmt: skip

    def optimizer_state_bytes(self) -> float:
        """Projector and projected moments for the target weights, two moments for everything else."""
        return float(sum(
            galore_state_elements(p, self.config.rank if self.projected(n, p) else None) * p.element_size()
            for n, p in self.trainable_parameters()
        ))  # fmt: skip
