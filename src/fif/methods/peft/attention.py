"""Attention with its projections as ``nn.Linear`` modules, so adapters can wrap q, k, v and out.

open_clip computes attention projections without calling a Linear module: ``nn.MultiheadAttention``
(the default block) and open_clip's ``Attention`` (``block_type: custom``) multiply by a fused
``in_proj_weight`` parameter, and ModifiedResNet's ``AttentionPool2d`` passes its ``q_proj``/``k_proj``/
``v_proj``/``c_proj`` weights straight to ``F.multi_head_attention_forward``. An adapter injected around
such a weight would never run (the FiF reference worked around this by patching a private forward).

:func:`linearize_attention` swaps each of those modules for a fif module that computes the same function
through ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` (or ``c_proj``) Linear modules, called as
modules. The swap is exact (same math, same FLOPs) and reversible: :meth:`restore` rebuilds the original
open_clip module with the original state_dict keys (``in_proj_weight`` = cat(q, k, v)).
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def additive_mask(
    mask: torch.Tensor | None, batch: int, heads: int, q_len: int, k_len: int, dtype: torch.dtype
) -> torch.Tensor | None:
    """An attention mask in PyTorch/open_clip semantics as an additive float mask for SDPA.

    Accepts (L, S) or (N·H, L, S) masks; bool True means *masked* (→ −inf), float masks are added.
    """
    if mask is None:
        return None
    if mask.dim() == 3:
        mask = mask.reshape(batch, heads, q_len, k_len)
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, L, E) → (N, H, L, E/H)."""
    n, length, _ = x.shape
    return x.reshape(n, length, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(N, H, L, D) → (N, L, H·D)."""
    n, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(n, length, heads * dim)


def meta_skeleton(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every parameter and buffer on the meta device (no weights copied)."""
    memo: dict[int, object] = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(module, memo)


def _linear_like(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An nn.Linear holding (a copy of) ``weight``/``bias``, on their device and dtype."""
    out_features, in_features = weight.shape
    layer = nn.Linear(in_features, out_features, bias=bias is not None, device="meta", dtype=weight.dtype)
    layer.weight = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
    return layer


def _split_in_proj(weight: torch.Tensor, bias: torch.Tensor | None) -> list[nn.Linear]:
    """q, k, v Linear modules from a fused (3E, E) in-projection."""
    biases = bias.chunk(3) if bias is not None else (None, None, None)
    return [_linear_like(w, b) for w, b in zip(weight.chunk(3), biases)]


class _Restorable(nn.Module):
    """Holds the original module's meta skeleton (unregistered: not a submodule, not in state_dict)."""

    def _keep_original(self, original: nn.Module) -> None:
        object.__setattr__(self, "_original", meta_skeleton(original))

    def original_state_dict(self) -> dict[str, torch.Tensor]:
        """This module's weights under the original module's keys."""
        return self.state_dict()

    def restore(self) -> nn.Module:
        """The original open_clip module holding this module's current weights."""
        device = next(self.parameters()).device
        original = copy.deepcopy(self._original).to_empty(device=device)
        original.load_state_dict(self.original_state_dict())
        original.train(self.training)
        return original


def _fused_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` with q/k/v_proj folded back into in_proj_weight / in_proj_bias."""
    state = module.state_dict()
    parts = [state.pop(f"{n}_proj.weight") for n in "qkv"]
    state["in_proj_weight"] = torch.cat(parts)
    if "q_proj.bias" in state:
        state["in_proj_bias"] = torch.cat([state.pop(f"{n}_proj.bias") for n in "qkv"])
    return state


class LinearMultiheadAttention(_Restorable):
    """``nn.MultiheadAttention`` (same embed dim for q, k, v) with q/k/v/out as Linear modules.

    Called like ``nn.MultiheadAttention`` (open_clip passes ``need_weights=False``); returns
    ``(output, None)``.
    """

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        self.embed_dim, self.num_heads = mha.embed_dim, mha.num_heads
        self.dropout, self.batch_first = mha.dropout, mha.batch_first
        self.q_proj, self.k_proj, self.v_proj = _split_in_proj(mha.in_proj_weight, mha.in_proj_bias)
        self.out_proj = _linear_like(mha.out_proj.weight, mha.out_proj.bias)
        self.train(mha.training)
        self._keep_original(mha)

    @staticmethod
    def supports(mha: nn.MultiheadAttention) -> bool:
        """Only the plain form open_clip uses: one fused in-projection, no bias_k/v, no zero attention."""
        return mha._qkv_same_embed_dim and mha.bias_k is None and mha.bias_v is None and not mha.add_zero_attn

    def original_state_dict(self) -> dict[str, torch.Tensor]:
        return _fused_state_dict(self)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise NotImplementedError(
                "LinearMultiheadAttention does not return attention weights; call it with need_weights=False"
            )
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, q_len, s_len = query.shape[0], query.shape[1], key.shape[1]
        q, k, v = (split_heads(proj(x), self.num_heads) for proj, x in
                   ((self.q_proj, query), (self.k_proj, key), (self.v_proj, value)))  # fmt: skip
        mask = additive_mask(attn_mask, n, self.num_heads, q_len, s_len, q.dtype)
        if key_padding_mask is not None:
            pad = additive_mask(key_padding_mask.view(n, 1, 1, s_len), n, self.num_heads, q_len, s_len, q.dtype)
            mask = pad if mask is None else mask + pad
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                             is_causal=is_causal and mask is None)  # fmt: skip
        out = self.out_proj(merge_heads(out))
        return (out if self.batch_first else out.transpose(0, 1)), None


class LinearCustomAttention(_Restorable):
    """open_clip's ``transformer.Attention`` (``block_type: custom``) with q/k/v as Linear modules.

    Keeps the original's submodules and options (qk-norm, scaled cosine attention, head scaling, inner
    norm, dropouts) and computes exactly what its forward computes.
    """

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.num_heads, self.head_dim = attn.num_heads, attn.head_dim
        self.scaled_cosine, self.logit_scale_max = attn.scaled_cosine, attn.logit_scale_max
        self.q_proj, self.k_proj, self.v_proj = _split_in_proj(attn.in_proj_weight, attn.in_proj_bias)
        self.ln_q, self.ln_k, self.ln_inner = attn.ln_q, attn.ln_k, attn.ln_inner
        self.attn_drop, self.out_proj, self.out_drop = attn.attn_drop, attn.out_proj, attn.out_drop
        self.logit_scale, self.head_scale = attn.logit_scale, attn.head_scale
        self.train(attn.training)
        self._keep_original(attn)

    def original_state_dict(self) -> dict[str, torch.Tensor]:
        return _fused_state_dict(self)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        n, length, _ = x.shape
        q, k, v = (split_heads(proj(x), self.num_heads) for proj in (self.q_proj, self.k_proj, self.v_proj))
        mask = additive_mask(attn_mask, n, self.num_heads, length, length, q.dtype)
        if self.scaled_cosine:
            attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)
            attn = attn * torch.clamp(self.logit_scale, max=self.logit_scale_max).exp()
            if mask is not None:
                attn = attn + mask
            out = self.attn_drop(attn.softmax(dim=-1)) @ v
        else:
            dropout = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(self.ln_q(q), self.ln_k(k), v, attn_mask=mask, dropout_p=dropout)
        if self.head_scale is not None:
            out = out * self.head_scale
        return self.out_drop(self.out_proj(self.ln_inner(merge_heads(out))))


class LinearAttentionPool2d(_Restorable):
    """ModifiedResNet's ``AttentionPool2d`` calling its q/k/v/c_proj Linear modules (same state_dict keys).

    Like the original it projects every token and applies ``c_proj`` to every position before taking the
    pooled (mean) token, so the step's FLOPs stay those of the base model.
    """

    def __init__(self, pool: nn.Module):
        super().__init__()
        self.positional_embedding, self.num_heads = pool.positional_embedding, pool.num_heads
        self.k_proj, self.q_proj, self.v_proj, self.c_proj = pool.k_proj, pool.q_proj, pool.v_proj, pool.c_proj
        self.train(pool.training)
        self._keep_original(pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)  # NCHW → N(HW)C
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        q, k, v = (split_heads(proj(x), self.num_heads) for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = self.c_proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))
        return out[:, 0]


LINEAR_ATTENTION_TYPES = (LinearMultiheadAttention, LinearCustomAttention, LinearAttentionPool2d)


def _converter(module: nn.Module):
    """The fif class that replaces ``module``, or None if it is not an attention fif converts."""
    from open_clip.modified_resnet import AttentionPool2d  # heavy: every fif command would pay for it at start
    from open_clip.transformer import Attention  # heavy: every fif command would pay for it at start

    if isinstance(module, nn.MultiheadAttention):
        return LinearMultiheadAttention if LinearMultiheadAttention.supports(module) else None
    if type(module) is Attention:
        return LinearCustomAttention
    if type(module) is AttentionPool2d:
        return LinearAttentionPool2d
    return None


def linearize_attention(model: nn.Module) -> list[str]:
    """Replace, in place, every attention module whose projections bypass ``nn.Linear`` (see module doc).

    Returns:
        The names of the replaced modules. Attention fif cannot convert (e.g. an ``nn.MultiheadAttention``
        with different key/value dims) is left as it is and logged.
    """
    replaced, skipped = [], []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.MultiheadAttention) or type(module).__name__ in ("Attention", "AttentionPool2d"):
            cls = _converter(module)
            if cls is None:
                skipped.append(name)
                continue
            model.set_submodule(name, cls(module))
            replaced.append(name)
    if skipped:
        log.info("attention modules left as they are (their projections cannot take adapters): %s", skipped)
    return replaced


def restore_attention(model: nn.Module) -> None:
    """Undo :func:`linearize_attention` in place: every fif attention module becomes the original again."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LINEAR_ATTENTION_TYPES):
            model.set_submodule(name, module.restore())
