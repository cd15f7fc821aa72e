"""Measuring one training step: FLOPs with FlopCounterMode, peak memory measured (CUDA) or estimated.

Two memory figures: the **single-device figure** (one device holds the whole global batch, no
recomputation, accumulation or sharding: the paper's Tab. 4 setting), which is what the MAF multiplier
divides, so MAFs do not depend on the number of GPUs; and the **per-device peak** at the per-rank
micro-batch under the run's :class:`Layout`, which is what each GPU must hold.

FLOP conventions (so that CPU, meta and GPU counts agree exactly):
  * a matmul of (m×k)·(k×n) is 2·m·n·k FLOPs; element-wise ops, softmax, norms and the optimizer update
    are not counted (FlopCounterMode's convention);
  * attention counts as its math: forward 2 batched matmuls (QKᵀ and PV), backward twice the forward
    (dQ, dK, dP, dV). Fused kernels (CPU flash, CUDA flash/efficient/cuDNN) are charged the same,
    whatever they recompute internally. On the meta device scaled_dot_product_attention is routed to
    the CPU flash kernel, so the tensors it saves for backward are the fused kernel's too;
  * nn.MultiheadAttention's inference fast path (a single op FlopCounterMode cannot see) is switched off
    while counting.
"""

from __future__ import annotations

import contextlib
import logging
import math
import weakref
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Iterable, Iterator, Mapping

import torch
from torch import nn

from fif.budget.mafs import ACCOUNTINGS, BudgetError, StepCost
from fif.core.flops import flop_counting, meta_copy
from fif.core.optim import OptimConfig
from fif.data.batch import Batch, synthetic_batch
from fif.methods.base import (
    BuildsOptimizer,
    CountedAsMergedAdapters,
    UpdateMethod,
    freeze_batchnorm_statistics,
    method_state_bytes,
    optimizer_state_bytes_of,
)
from fif.model.checkpointing import enable_grad_checkpointing
from fif.model.clip import Clip, build_clip, quiet_open_clip

log = logging.getLogger(__name__)

_EXTRAPOLATION_BATCHES = (2, 3, 4)  # fit points of the small-batch fallback; B = 5 checks the fit
SHARDINGS = ("none", "fsdp")


@dataclass(frozen=True)
class Layout:
    """How a run lays one optimizer step out on its devices.

    Attributes:
        world_size: data-parallel ranks; each holds ``batch_size / world_size`` rows of the global batch.
        grad_accum_steps: micro-batches per rank per step (one micro-batch's activations at a time).
        grad_checkpointing: transformer blocks recompute their activations in backward.
        shard: ``"fsdp"``: parameters, gradients and optimizer state split over the ranks
            (torch's ``fully_shard``); ``"none"``: replicated (DDP or one process).
    """

    world_size: int = 1
    grad_accum_steps: int = 1
    grad_checkpointing: bool = False
    shard: str = "none"

    def __post_init__(self) -> None:
        if self.world_size < 1 or self.grad_accum_steps < 1:
            raise BudgetError(f"layout: world_size and grad_accum_steps must be >= 1, got {self}")
        if self.shard not in SHARDINGS:
            raise BudgetError(f"layout: shard={self.shard!r}: choose one of {', '.join(SHARDINGS)}")

    def device_batch(self, batch_size: int) -> int:
        """Samples one device holds at once: the per-rank micro-batch (rounded up: the largest one)."""
        return max(1, math.ceil(batch_size / (self.world_size * self.grad_accum_steps)))

    def describe(self) -> str:
        ranks = f"{self.world_size} rank{'s' if self.world_size > 1 else ''}"
        ranks += f" ({self.shard})" if self.shard != "none" else ""
        micro = f"{self.grad_accum_steps} micro-batch{'es' if self.grad_accum_steps > 1 else ''}"
        return ", ".join([ranks, micro, *(["checkpointed"] if self.grad_checkpointing else [])])


# ----------------------------------------------------------------------------------------------
# Tracing one step


@dataclass(frozen=True)
class StepTrace:
    """What one traced training step counted: FLOPs and bytes of tensors saved for backward."""

    flops: int
    forward_flops: int
    activation_bytes: int  # unique storages saved for backward, excluding parameters, buffers and the batch


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def _storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (shared or tied tensors counted once)."""
    return sum({_storage_key(t): t.untyped_storage().nbytes() for t in tensors}.values())


def trace_step(model: nn.Module, method: UpdateMethod, batch: Batch, recompute_attention: bool = False) -> StepTrace:
    """Run ``method.loss(batch, model)`` forward and backward once, counting FLOPs and saved activations.

    Gradients go to the parameters with ``requires_grad`` (via ``torch.autograd.grad``, so no ``.grad``
    is written). Works on any device, including meta. ``recompute_attention``: see
    :func:`fif.core.flops.flop_counting` (paper accounting).
    """
    known = {_storage_key(t) for t in [*model.parameters(), *model.buffers(), batch.images, batch.tokens, batch.source]}
    # Weak references: a tensor saved by a graph branch the loss drops (e.g. in peft's DoRA) is freed before
    # the backward and does not count; what counts is what the graph still holds when the forward ends.
    # Distinct live storages have distinct addresses, so keying by address is safe only among live ones
    # (summing as tensors were packed made a freed storage's address, reused, count once for two).
    packed: list[weakref.ref] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        packed.append(weakref.ref(t))
        return t

    def live_bytes() -> int:
        live = [t for t in (r() for r in packed) if t is not None]
        return sum({k: t.untyped_storage().nbytes() for t in live if (k := _storage_key(t)) not in known}.values())

    params = [p for p in model.parameters() if p.requires_grad]
    with flop_counting(recompute_attention) as counter:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = method.loss(batch, model).total
        forward, activation_bytes = counter.get_total_flops(), live_bytes()
        if params and loss.requires_grad:
            torch.autograd.grad(loss, params, allow_unused=True)
    return StepTrace(flops=counter.get_total_flops(), forward_flops=forward, activation_bytes=activation_bytes)


@contextlib.contextmanager
def _training_only(model: nn.Module, trainable_ids: set[int]) -> Iterator[None]:
    """Train mode, and requires_grad exactly on ``trainable_ids``; flags, modes and buffers (e.g.
    BatchNorm running statistics a traced step updates) are restored afterwards."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers() if b.device.type != "meta"]
    try:
        for p in params:
            p.requires_grad_(id(p) in trainable_ids)
        freeze_batchnorm_statistics(model)  # frozen BatchNorm layers run in eval mode, as in training
        model.train()
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode
        with torch.no_grad():
            for b, value in buffers:
                b.copy_(value)


def _quadratic_at(points: Mapping[int, int], x: int) -> int:
    """Exact value at x of the polynomial of degree < len(points) through ``points`` (Lagrange)."""
    total = Fraction(0)
    for xi, yi in points.items():
        term = Fraction(yi)
        for xj in points:
            if xj != xi:
                term *= Fraction(x - xj, xi - xj)
        total += term
    return round(total)


def _trace_by_extrapolation(clip: Clip, method: UpdateMethod, batch_size: int, device: torch.device,
                            recompute_attention: bool = False) -> StepTrace:  # fmt: skip
    """Trace at small batches on ``device`` and extrapolate: FLOPs and activations are quadratic in B.

    f(B) = c0 + c1·B + c2·B² (per-sample work is linear, the B×B logits quadratic, B-free extras
    constant); fitted through B ∈ {2, 3, 4} and checked at B = 5.
    """
    fits = {b: trace_step(clip.model, method, synthetic_batch(clip, b, device), recompute_attention)
            for b in (*_EXTRAPOLATION_BATCHES, 5)}  # fmt: skip
    out = {}
    for name in ("flops", "forward_flops", "activation_bytes"):
        points = {b: getattr(fits[b], name) for b in _EXTRAPOLATION_BATCHES}
        if _quadratic_at(points, 5) != getattr(fits[5], name):
            raise BudgetError(
                f"{name} of method {method.name!r} is not quadratic in the batch size, so it cannot be "
                f"extrapolated from small batches; make its loss run on the meta device"
            )
        out[name] = _quadratic_at(points, batch_size)
    return StepTrace(**out)


def paper_merged_adapter_flops(clip: Clip, method: CountedAsMergedAdapters, batch_size: int) -> tuple[int, int]:
    """(FLOPs, forward FLOPs) of an adapter method's step as FiF's Tab. 4 counted it (paper accounting).

    The reference merged each adapter into its weight every step (W' = W + s·B·A, then x·W'ᵀ): the step is
    the base model's with a dense weight gradient for every adapted weight, plus 6·r·d_out·d_in per adapted
    weight (B·A forward, and dA, dB from dW'; 2·r·d_out·d_in of it in the forward). Traced on a meta copy
    of the base architecture, attention's backward with its QKᵀ recomputation, as the paper counted.
    """
    model = clip.model if clip.device.type == "meta" else meta_copy(clip.model)[0]
    plain, names, rank = method.paper_merged_step(model)
    params = dict(plain.named_parameters())
    with _training_only(plain, {id(params[n]) for n in names}):
        trace = trace_step(plain, method, synthetic_batch(clip, batch_size, "meta"), recompute_attention=True)
    merged = 2 * rank * sum(params[n].shape[0] * params[n].shape[1] for n in names)  # forming B·A: 2·r·d_out·d_in
    return trace.flops + 3 * merged, trace.forward_flops + merged


# ----------------------------------------------------------------------------------------------
# Peak memory


def estimate_peak_memory(
    param_bytes: float,
    trainable_bytes: float,
    activation_bytes: float,
    batch_bytes: float,
    optimizer_state_bytes: float | None = None,
    method_state_bytes: float = 0.0,
) -> dict[str, float]:
    """The CPU/meta estimate of a step's peak memory, term by term (sum them for the peak).

    peak ≈ parameters (all, incl. buffers) + gradients (trainable) + optimizer state
           + the method's own state (Fisher/Ω and anchors, teachers, replay buffers)
           + activations saved for backward + the batch,

    with the optimizer state AdamW's 2 × trainable unless ``optimizer_state_bytes`` is given (a method
    with its own optimizer, e.g. GaLore's projected moments: :class:`~fif.methods.base.BuildsOptimizer`).

    An estimate, not a measurement: it adds terms that do not all peak at the same moment (activations
    are freed while gradients appear) and omits kernel workspaces and temporaries. Reference and
    method use the same recipe, so their ratio (the MAF multiplier) is what it is meant to be.
    """
    return {
        "parameters": float(param_bytes),
        "gradients": float(trainable_bytes),
        "optimizer_state": 2.0 * trainable_bytes if optimizer_state_bytes is None else float(optimizer_state_bytes),
        "method_state": float(method_state_bytes),
        "activations": float(activation_bytes),
        "batch": float(batch_bytes),
    }


def run_real_steps(clip: Clip, method: UpdateMethod, batch_size: int, device: torch.device | str,
                   trainable_ids: set[int], amp_dtype: torch.dtype | None = None, steps: int = 2,
                   grad_checkpointing: bool = False) -> None:  # fmt: skip
    """``steps`` real AdamW steps of a zero-weight copy of ``clip.model`` on ``device`` (the model is untouched;
    ``grad_checkpointing`` turns recomputation on in the copy).

    What the CUDA peak is read around: the copy's weights, gradients, optimizer state, activations and
    batch all live on ``device``; from the second step on the optimizer state is in place, as in training.
    Trainable parameters are matched by name (``to_empty`` may replace parameter objects).
    """
    device = torch.device(device)
    names = {n for n, p in clip.model.named_parameters() if id(p) in trainable_ids}
    model, _ = meta_copy(clip.model)
    model.to_empty(device=device)
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.zero_()
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)
        if name in names:
            trainable.append(p)
    if grad_checkpointing:
        enable_grad_checkpointing(model)
    freeze_batchnorm_statistics(model)
    model.train()
    if isinstance(method, BuildsOptimizer):  # the method's own optimizer (GaLore), else AdamW
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        optimizer = method.build_optimizer(named, 0.0, OptimConfig())
    else:
        optimizer = torch.optim.AdamW(trainable, lr=0.0)
    batch = synthetic_batch(clip, batch_size, device)
    for _ in range(steps):
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = method.loss(batch, model).total
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _cuda_peak_bytes(clip: Clip, method: UpdateMethod, batch_size: int, device: torch.device, trainable_ids: set[int],
                     amp_dtype: torch.dtype | None, grad_checkpointing: bool = False) -> float:  # fmt: skip
    """torch.cuda.max_memory_allocated over :func:`run_real_steps`, less what was allocated before.

    Raises:
        BudgetError: the step does not fit on the device (the message names the batch and the fix).
    """
    torch.cuda.synchronize(device)
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    try:
        run_real_steps(clip, method, batch_size, device, trainable_ids, amp_dtype,
                       grad_checkpointing=grad_checkpointing)
    except torch.cuda.OutOfMemoryError as e:
        torch.cuda.empty_cache()
        raise BudgetError(
            f"method {method.name!r}: a step at batch {batch_size} does not fit on {device} to measure its peak "
            "memory; set budget.memory=estimate (the single-device figure estimated on the meta device)"
        ) from e
    torch.cuda.synchronize(device)  # sync point: read the peak after the kernels ran
    peak = torch.cuda.max_memory_allocated(device) - baseline
    torch.cuda.empty_cache()
    # The method's state (Fisher, anchors, teachers, buffers) is held on the device all run long, but the
    # zero-weight copy above does not allocate it (and a real clip's was allocated before the baseline).
    return float(peak) + method_state_bytes(method)


# ----------------------------------------------------------------------------------------------
# The public measurement


def _trace(clip: Clip, method: UpdateMethod, batch_size: int, trainable_ids: set[int], recompute: bool,
           grad_checkpointing: bool = False) -> StepTrace:  # fmt: skip
    """One step traced on a meta copy of the model (the model itself if it is on meta and nothing is
    switched on), else on its device at small batches, extrapolated.

    Raises:
        BudgetError: a loss that runs neither on meta nor on a meta-clip's device.
    """
    try:
        own = clip.device.type == "meta" and not grad_checkpointing
        model, params = (clip.model, None) if own else meta_copy(clip.model)
        if grad_checkpointing:
            enable_grad_checkpointing(model)  # on the copy: recomputed blocks save only their inputs
        meta_ids = trainable_ids if params is None else {id(params[i]) for i in trainable_ids if i in params}
        with _training_only(model, meta_ids):
            return trace_step(model, method, synthetic_batch(clip, batch_size, "meta"), recompute)
    except Exception as e:  # any op without a meta kernel, or a loss that mixes in real tensors
        if clip.device.type == "meta":
            raise BudgetError(f"method {method.name!r}: its loss does not run on the meta device ({e})") from e
        log.info("method %r does not trace on meta (%s); extrapolating from small batches%s", method.name, e,
                 " (without checkpointing: an upper bound)" if grad_checkpointing else "")
        with _training_only(clip.model, trainable_ids):
            return _trace_by_extrapolation(clip, method, batch_size, clip.device, recompute)


def _estimate_parts(clip: Clip, method: UpdateMethod, trainable_ids: set[int], activation_bytes: int,
                    batch_size: int) -> dict[str, float]:  # fmt: skip
    """:func:`estimate_peak_memory`'s terms for ``clip`` and ``method`` at ``batch_size`` (one device, replicated)."""
    trainable = [p for p in clip.model.parameters() if id(p) in trainable_ids]
    batch = synthetic_batch(clip, batch_size, "meta")
    return estimate_peak_memory(
        param_bytes=_storage_bytes([*clip.model.parameters(), *clip.model.buffers()]),
        trainable_bytes=_storage_bytes(trainable),
        activation_bytes=activation_bytes,
        batch_bytes=sum(t.numel() * t.element_size() for t in (batch.images, batch.tokens, batch.source)),
        optimizer_state_bytes=optimizer_state_bytes_of(method),
        method_state_bytes=method_state_bytes(method),
    )


def _device_peak(clip: Clip, method: UpdateMethod, batch_size: int, device: torch.device, layout: Layout,
                 trainable_ids: set[int],
                 amp_dtype: torch.dtype | None) -> tuple[float, str, dict[str, float]]:  # fmt: skip
    """Peak memory of one device under ``layout``: (bytes, memory source, estimate terms).

    The step runs (CUDA) or is traced (meta) at the per-rank micro-batch with the layout's recomputation.
    Under FSDP (:mod:`fif.train.fsdp`) each rank holds 1/W of the gradients and optimizer state, and the
    parameters twice over: the run's whole model plus its 1/W shard of the task's sharded copy. On CUDA
    the one-device measurement is corrected by those estimated differences; the full parameters of the
    block being computed, which FSDP gathers for a moment, are left out.
    """
    micro = layout.device_batch(batch_size)
    trace = _trace(clip, method, micro, trainable_ids, False, layout.grad_checkpointing)
    parts = _estimate_parts(clip, method, trainable_ids, trace.activation_bytes, micro)
    if layout.shard == "fsdp":
        share = 1.0 / layout.world_size
        sharded = {**parts, "parameters": parts["parameters"] * (1.0 + share),
                   "gradients": parts["gradients"] * share, "optimizer_state": parts["optimizer_state"] * share}
    else:
        sharded = parts
    if device.type == "cuda":
        peak = _cuda_peak_bytes(clip, method, micro, device, trainable_ids, amp_dtype, layout.grad_checkpointing)
        return peak + sum(sharded.values()) - sum(parts.values()), "cuda_max_allocated", {}
    return sum(sharded.values()), "estimate", sharded


def measure_step_cost(
    clip: Clip,
    method: UpdateMethod,
    batch_size: int,
    device: torch.device | str = "cpu",
    *,
    amp_dtype: torch.dtype | None = None,
    accounting: str = "exact",
    layout: Layout | None = None,
) -> StepCost:
    """FLOPs and peak memory of one training step of ``method`` at ``batch_size``.

    FLOPs: ``method.loss`` forward + backward on a synthetic batch, with gradients only for
    ``method.trainable_parameters()``, counted on a meta-device copy of the model at the full batch
    (exact, no compute, no weights copied). If the method's loss cannot run on meta (e.g. it holds real
    tensors), the step is traced on the model's device at B = 2..5 and extrapolated exactly (FLOPs are
    quadratic in B: the B×B logits).

    Memory (the single-device figure the multiplier divides: the whole ``batch_size`` on one device, no
    recomputation, accumulation or sharding): on a CUDA ``device``, ``torch.cuda.max_memory_allocated``
    around two real steps (``memory_source="cuda_max_allocated"``); otherwise :func:`estimate_peak_memory`
    from the traced step (``"estimate"``). With ``layout``, also the per-device peak at the per-rank
    micro-batch under that layout (``device_peak_bytes``, same source), which never enters the multiplier.

    Args:
        clip: the model (real weights or meta; it is not modified).
        method: the method whose step is measured (its loss, trainable parameters).
        batch_size: samples per optimizer step (the global batch).
        device: ``"cpu"``/``"meta"`` for the estimate, ``"cuda[:i]"`` to measure the peak.
        amp_dtype: autocast dtype for the CUDA measurement (None = the model's dtype).
        accounting: ``"exact"`` (what fif computes) or ``"paper"`` (FiF Tab. 4's FLOP count: a fused
            attention backward also pays for recomputing QKᵀ; adapter methods are counted as the reference
            ran them, :func:`paper_merged_adapter_flops`; see :mod:`fif.budget.mafs` for the rest).
        layout: the run's layout (ranks, micro-batches, checkpointing, sharding); None = no per-device figure.

    Raises:
        BudgetError: bad batch size or accounting, a loss that can be traced neither on meta nor on the
            device, or (CUDA) a step that does not fit on the device.
    """
    if batch_size < 1:
        raise BudgetError(f"batch size must be >= 1, got {batch_size}")
    if accounting not in ACCOUNTINGS:
        raise BudgetError(f"budget.accounting={accounting!r}: choose one of {', '.join(ACCOUNTINGS)}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BudgetError(f"device {str(device)!r}: CUDA is not available here; use 'cpu' for the memory estimate")
    trainable_ids = {id(p) for _, p in method.trainable_parameters()}
    trace = _trace(clip, method, batch_size, trainable_ids, accounting == "paper")
    if accounting == "paper" and isinstance(method, CountedAsMergedAdapters):  # the reference's merged adapters
        flops, forward = paper_merged_adapter_flops(clip, method, batch_size)  # memory stays fif's own step's
        trace = StepTrace(flops, forward, trace.activation_bytes)
    if device.type == "cuda":
        peak = _cuda_peak_bytes(clip, method, batch_size, device, trainable_ids, amp_dtype)
        cost = StepCost(trace.flops, peak, "cuda_max_allocated", trace.forward_flops, batch_size,
                        accounting=accounting)
    else:
        parts = _estimate_parts(clip, method, trainable_ids, trace.activation_bytes, batch_size)
        cost = StepCost(trace.flops, sum(parts.values()), "estimate", trace.forward_flops, batch_size, parts,
                        accounting)
    if layout is None:
        return cost
    peak, source, parts = _device_peak(clip, method, batch_size, device, layout, trainable_ids, amp_dtype)
    return replace(cost, device_peak_bytes=peak, device_batch_size=layout.device_batch(batch_size),
                   device_memory_source=source, device_memory_parts=parts, layout=layout.describe())


def meta_clip(arch: str) -> Clip:
    """A :class:`Clip` of architecture ``arch`` with its weights on the meta device: shapes only, built in
    well under a second even for large models; enough for :func:`measure_step_cost`.
    """

    with quiet_open_clip(), torch.device("meta"):
        return build_clip(arch, device="meta")
