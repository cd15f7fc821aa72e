"""Activation checkpointing of open_clip's transformer towers (recompute activations in backward).

Lives with the model because both the training loop and the budget's per-device memory estimate
(:mod:`fif.budget.measure`, which lays a step out as the run will) turn it on.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

log = logging.getLogger(__name__)


@functools.cache
def _checkpointed_custom_block() -> type:
    """A ``CustomResidualAttentionBlock`` that recomputes its activations in backward.

    open_clip 3.3's ``CustomTransformer`` checkpoints its blocks with the arguments of the standard
    block, ``(x, None, None, attn_mask)``, which the custom block's ``forward(x, attn_mask)`` rejects.
    Swapping the block's class keeps its parameters, state_dict keys and deepcopy behaviour; the class
    is built once (open_clip is imported lazily) and published on this module so models still pickle.
    """
    from open_clip.transformer import CustomResidualAttentionBlock  # heavy: every fif command would pay for it at start

    class CheckpointedCustomBlock(CustomResidualAttentionBlock):
        def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
            if self.training and torch.is_grad_enabled():
                return checkpoint(super().forward, x, attn_mask, use_reentrant=False)
            return super().forward(x, attn_mask)

    CheckpointedCustomBlock.__module__, CheckpointedCustomBlock.__qualname__ = __name__, "CheckpointedCustomBlock"
    globals()["CheckpointedCustomBlock"] = CheckpointedCustomBlock
    return CheckpointedCustomBlock


def enable_grad_checkpointing(model: nn.Module) -> None:
    """Turn on activation checkpointing in the transformer towers of an open_clip model.

    Uses open_clip's ``set_grad_checkpointing``; towers of custom blocks (``block_type: custom``, as in
    ``fif-mini-rn32``'s text tower) get checkpointed blocks instead (see :func:`_checkpointed_custom_block`).
    open_clip's ModifiedResNet image tower does not checkpoint.

    Raises:
        ValueError: the model has no ``set_grad_checkpointing``.
    """
    if not hasattr(model, "set_grad_checkpointing"):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing; set train.grad_checkpointing=false")
    model.set_grad_checkpointing(True)
    from open_clip.transformer import CustomResidualAttentionBlock  # heavy: every fif command would pay for it at start

    for tower in model.modules():
        blocks = list(getattr(tower, "resblocks", []))
        if getattr(tower, "grad_checkpointing", False) and any(type(b) is CustomResidualAttentionBlock for b in blocks):
            block_cls = _checkpointed_custom_block()
            tower.grad_checkpointing = False  # open_clip's own path would call the blocks wrongly
            for b in blocks:
                b.__class__ = block_cls
    if type(getattr(model, "visual", None)).__name__ == "ModifiedResNet":
        log.info("grad checkpointing: open_clip's ModifiedResNet image tower does not checkpoint; text tower only")
