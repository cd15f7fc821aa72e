"""Counting FLOPs with torch's FlopCounterMode, with formulas for what it cannot see.

Conventions (so that CPU, meta and GPU counts agree exactly): a matmul of (m×k)·(k×n) is 2·m·n·k FLOPs;
attention counts as its math (forward: QKᵀ and PV; backward: twice the forward), whichever fused kernel
runs; nn.MultiheadAttention's inference fast path is switched off while counting. :func:`meta_copy` gives a
weightless copy of a model on the meta device, so a step can be counted without memory or time."""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _bhsd(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """(batch, heads, seq, dim) of an attention input; 3-D inputs have one implicit batch."""
    return tuple(shape) if len(shape) == 4 else (1, *shape)  # type: ignore[return-value]


def attention_forward_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Forward FLOPs of attention: QKᵀ (2·b·h·s_q·s_k·d_qk) + PV (2·b·h·s_q·s_k·d_v)."""
    b, h, s_q, d_qk = _bhsd(query_shape)
    s_k, d_v = _bhsd(key_shape)[2], _bhsd(value_shape)[3]
    return 2 * b * h * s_q * s_k * (d_qk + d_v)


def attention_backward_flops(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    """Backward FLOPs of attention: dP = dO·Vᵀ, dV = Pᵀ·dO, dQ = dS·K, dK = dSᵀ·Q = 2 × forward.

    Fused kernels that recompute P in the backward are charged the same (the math, not the kernel).
    """
    return 2 * attention_forward_flops(query_shape, key_shape, value_shape)


def attention_backward_flops_recomputed(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    """Backward FLOPs of a fused attention kernel as torch's FlopCounterMode charges it on CUDA: the math
    backward plus the recomputation of S = QKᵀ (2·b·h·s_q·s_k·d_qk). The FiF paper's Tab. 4 was counted so."""
    b, h, s_q, d_qk = _bhsd(query_shape)
    recompute = 2 * b * h * s_q * _bhsd(key_shape)[2] * d_qk
    return attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape) + recompute


def _attention_flop_formulas(recompute: bool = False) -> dict[Any, Callable[..., int]]:
    """FlopCounterMode overrides: fused attention kernels (CPU and CUDA) → the math convention above
    (``recompute``: the backward also pays for recomputing QKᵀ, as the paper's count did)."""
    aten = torch.ops.aten
    forward = ["_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
               "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"]  # fmt: skip
    formulas: dict[Any, Callable[..., int]] = {}
    for name in forward:
        if hasattr(aten, name):
            formulas[getattr(aten, name)] = attention_forward_flops
        if hasattr(aten, name + "_backward"):
            backward = attention_backward_flops_recomputed if recompute else attention_backward_flops
            formulas[getattr(aten, name + "_backward")] = backward
    return formulas


@contextlib.contextmanager
def _meta_attention_as_fused() -> Iterator[None]:
    """On the meta device, run scaled_dot_product_attention as the CPU flash kernel.

    On meta, SDPA falls back to its math decomposition (bmm + softmax), which saves the s×s attention
    matrix for backward; CPU and GPU run a fused kernel that does not. Routing keeps the op (FLOPs) and
    the saved tensors (memory estimate) the same as on CPU. Dropout and grouped-query attention keep
    the math path, as on CPU. The module attribute is swapped (not a TorchFunctionMode) because
    ``F.multi_head_attention_forward`` calls SDPA from inside another overridable function, where a mode
    is not active; non-meta calls go to the original untouched.
    """
    original = F.scaled_dot_product_attention

    def routed(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        out = _fused_on_meta(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
        if out is None:
            out = original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                           scale=scale, enable_gqa=enable_gqa)  # fmt: skip
        return out

    F.scaled_dot_product_attention = routed
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def _fused_on_meta(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if query.device.type != "meta" or dropout_p > 0 or enable_gqa or query.dim() != 4:
        return None
    if attn_mask is not None and attn_mask.dtype == torch.bool:  # SDPA's own conversion: False → −inf
        attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device).masked_fill(
            ~attn_mask, float("-inf")
        )
    out, _ = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, 0.0, is_causal, attn_mask=attn_mask, scale=scale
    )
    return out


@contextlib.contextmanager
def flop_counting(recompute_attention: bool = False) -> Iterator[FlopCounterMode]:
    """A FlopCounterMode with fif's conventions (see the module docstring); yields the counter.

    Args:
        recompute_attention: charge a fused attention backward its QKᵀ recomputation too (the FiF paper's
            count, ``budget.accounting=paper``); default: the math only.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_attention_flop_formulas(recompute_attention))
        with _meta_attention_as_fused(), counter:
            yield counter
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of running ``fn()`` (forward and any backward it runs) with fif's conventions.

    For task hooks: e.g. ``HookCost(flops=count_flops(lambda: fisher_pass(...)))``.
    """
    with flop_counting() as counter:
        fn()
    return counter.get_total_flops()


def meta_copy(model: nn.Module) -> tuple[nn.Module, dict[int, nn.Parameter]]:
    """A copy of ``model`` with every parameter and buffer on the meta device (no weights are copied).

    Returns:
        The copy and a map id(original parameter) → copied parameter.
    """
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    params = {id(p): memo[id(p)] for p in model.parameters()}
    return copy.deepcopy(model, memo), params
