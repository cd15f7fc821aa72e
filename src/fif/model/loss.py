"""CLIP's contrastive loss and the gather that makes it the loss of the whole global batch.

In a data-parallel step each rank computes features of its own rows; :func:`global_batch_features` gathers
them from every rank (differentiably) and puts them back in global row order, so the loss equals the
one-process loss of the global batch. In one process it returns its inputs as they are."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's ``x`` along dim 0; backward: the sum over ranks of the gradient for
    this rank's rows (each rank's loss used them)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(ctx.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # Σ over ranks of ∂L_k/∂(all rows); then this rank's rows
        rows = grad.shape[0] // ctx.world
        return grad[ctx.rank * rows : (ctx.rank + 1) * rows]


class _AllReduce(torch.autograd.Function):
    """Sum of every rank's ``x``; backward: the sum over ranks of the gradient (every rank's loss used it)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` concatenated along dim 0 (rank order), differentiable.

    Every rank must pass the same shape. The gradient each rank gets for its ``x`` is the sum over ranks
    of the gradients of their losses, the convention under which DDP's averaging gives the gradient of
    the mean of the ranks' losses (see the module docstring).
    """
    return _AllGather.apply(x)


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of ``x``, differentiable (same gradient convention as :func:`all_gather_with_grad`)."""
    return _AllReduce.apply(x)


def strided_to_global(gathered: torch.Tensor, world_size: int) -> torch.Tensor:
    """Rows gathered in rank order (rank r held global rows r, r+W, ...) put back in global order."""
    rows = gathered.shape[0] // world_size
    return gathered.reshape(world_size, rows, *gathered.shape[1:]).transpose(0, 1).reshape(gathered.shape)


# Features that came out of the model's forward on this rank's rows of the step's batch (see
# DataParallelModel), by id; entries vanish with their tensors. Empty in a single process.
_RANK_ROWS: "weakref.WeakValueDictionary[int, torch.Tensor]" = weakref.WeakValueDictionary()


def mark_rank_rows(*tensors: torch.Tensor) -> None:
    """Mark features computed from this rank's rows of the global batch (gathered by :func:`global_batch_features`)."""
    for t in tensors:
        _RANK_ROWS[id(t)] = t


def _is_rank_rows(t: torch.Tensor) -> bool:
    return _RANK_ROWS.get(id(t)) is t


def global_batch_features(
    image_features: torch.Tensor, text_features: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole global batch's features in global row order, when both are this rank's rows of a
    data-parallel training step; otherwise (single process, task hooks, replayed pairs) unchanged."""
    if not _RANK_ROWS or not (_is_rank_rows(image_features) and _is_rank_rows(text_features)):
        return image_features, text_features
    world = dist.get_world_size()
    return (
        strided_to_global(all_gather_with_grad(image_features), world),
        strided_to_global(all_gather_with_grad(text_features), world),
    )


class ImageTextBatch(Protocol):
    """What the loss reads of a batch (:class:`fif.data.batch.Batch` is one)."""

    images: torch.Tensor
    tokens: torch.Tensor


def clip_features(model: nn.Module, batch: ImageTextBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image features, text features, logit scale) from an open_clip model with output_dict=True."""
    out = model(batch.images, batch.tokens)
    return out["image_features"], out["text_features"], out["logit_scale"]


def clip_contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Symmetric InfoNCE of CLIP (Radford et al. 2021, eq. in Fig. 3).

    logits = exp(s)·I·Tᵀ with s the learned log-temperature (open_clip returns exp(s) already);
    loss = ½ [CE(logits, i) + CE(logitsᵀ, i)] with the matching pair on the diagonal.

    In a data-parallel training step the features of this rank's rows are gathered from every rank first
    (:func:`fif.train.distributed.global_batch_features`): the loss is that of the whole global batch.
    """
    image_features, text_features = global_batch_features(image_features, text_features)  # as is in one process
    logits = logit_scale * image_features @ text_features.t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (
        F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        + F.cross_entropy(logits.t(), labels, label_smoothing=label_smoothing)
    )


@dataclass(frozen=True)
class ClipLoss:
    """CLIP's contrastive loss with its settings (``train.label_smoothing``), as one value a method calls.

    The settings belong to the loss, not to a method: every method's CLIP term (and EWC's Fisher pass,
    the replay losses) reads them from the :class:`ClipLoss` the runner hands it
    (``UpdateMethod.clip_loss``), so no method options carry them.

    Args:
        label_smoothing: ε of both cross-entropies, in [0, 1) (0 = off).

    Raises:
        ValueError: ``label_smoothing`` outside [0, 1).
    """

    label_smoothing: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"train.label_smoothing must be in [0, 1) (0 = off), got {self.label_smoothing!r}")

    def __call__(
        self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
    ) -> torch.Tensor:
        """:func:`clip_contrastive_loss` of the features with these settings."""
        return clip_contrastive_loss(image_features, text_features, logit_scale, self.label_smoothing)
