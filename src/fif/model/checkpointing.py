"""How the towers of an open_clip model run: activation checkpointing (recompute activations in
backward) and ``torch.compile``.

Lives with the model because the training loop, the runner and the budget's per-device memory estimate
(:mod:`fif.budget.measure`, which lays a step out as the run will) all turn these on.
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


TOWERS = ("visual", "transformer")  # open_clip's image tower and text transformer


def compile_towers_(model: nn.Module, backend: str = "inductor") -> list[str]:
    """``torch.compile`` the model's towers in place (``nn.Module.compile``): the image tower and the text
    transformer, so training steps and evaluation (``encode_image``/``encode_text`` call the same modules)
    run compiled. The state_dict keys, deep copies and the loss are unchanged; the first call of each
    tower compiles it (and evaluation mode once more), later tasks reuse the graphs.

    Args:
        model: an open_clip CLIP.
        backend: torch.compile's backend (``"inductor"``: generated kernels; ``"aot_eager"`` for tests).

    Returns:
        The names of the compiled towers.

    Raises:
        ValueError: the model has none of the towers.
    """
    names = [n for n in TOWERS if isinstance(getattr(model, n, None), nn.Module)]
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no visual or transformer tower to compile; set train.compile=false"
        )
    for name in names:
        getattr(model, name).compile(backend=backend)
    return names
