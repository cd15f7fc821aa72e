"""Merging over time: weights for a checkpoint history, in-place EMA, and the running merge.

FiF (arXiv 2408.14471) and TIME (Dziadzio et al. 2025, arXiv 2412.06712) merge the checkpoints a stream
produces: offline (all checkpoints so far, weighted by a scheme), as a running merge r ← merge(θ_t, r)
after each task (EMA-merge), or per step (online EMA, θ_ema ← d·θ_ema + (1 − d)·θ).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from fif.merge.core import merge
from fif.merge.sources import MergeError, SourceLike

# Unnormalised weight of checkpoint i = 1..n (1 oldest, n newest) under each scheme.
_SCHEMES: dict[str, Callable[[int, int], float]] = {
    "uniform": lambda i, n: 1.0,
    "linear": lambda i, n: float(i),
    "sqrt": lambda i, n: math.sqrt(i),
    "quadratic": lambda i, n: float(i * i),
    "exponential": lambda i, n: 2.0 ** (i - n),  # each checkpoint counts twice its predecessor
    "reversed": lambda i, n: float(n - i + 1),  # linear, oldest heaviest
}

HISTORY_SCHEMES = tuple(_SCHEMES)


def history_weights(scheme: str, n: int) -> list[float]:
    """Interpolation weights for a history of n checkpoints, oldest first, summing to 1.

    With i = 1..n (n the newest): uniform 1; linear i; sqrt √i; quadratic i²; exponential 2^(i−n)
    (each checkpoint twice the weight of the one before); reversed n − i + 1 (oldest heaviest).

    Raises:
        MergeError: unknown scheme (with the valid ones) or n < 1.
    """
    if scheme not in _SCHEMES:
        raise MergeError(f"unknown history weighting scheme {scheme!r}. Valid: {', '.join(HISTORY_SCHEMES)}")
    if n < 1:
        raise MergeError(f"history_weights needs at least one checkpoint, got n={n}")
    raw = [_SCHEMES[scheme](i, n) for i in range(1, n + 1)]
    total = math.fsum(raw)
    return [w / total for w in raw]


def ema_update_(avg: Mapping[str, Tensor], new: Mapping[str, Tensor], decay: float) -> None:
    """In place: avg ← decay·avg + (1 − decay)·new for float tensors; non-float tensors copy ``new``.

    Issues device ops only (no host sync), so it can run after every training step. ``new`` is cast to
    each average's dtype and device, so an fp32 average can track a bf16 model.

    Raises:
        MergeError: decay outside [0, 1], or key sets / shapes that differ.
    """
    if not 0.0 <= decay <= 1.0:
        raise MergeError(f"EMA decay must be in [0, 1], got {decay}")
    if avg.keys() != new.keys():
        missing, extra = sorted(set(avg) - set(new)), sorted(set(new) - set(avg))
        raise MergeError(
            f"EMA update: the model's keys differ from the average's: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    floats_avg, floats_new = [], []
    with torch.no_grad():
        for key, a in avg.items():
            n = new[key]
            if a.shape != n.shape:
                raise MergeError(f"EMA update: {key!r} has shape {tuple(n.shape)} but the average has {tuple(a.shape)}")
            if a.is_floating_point():
                floats_avg.append(a)
                floats_new.append(n.to(device=a.device, dtype=a.dtype))
            else:
                a.copy_(n)
        if floats_avg:
            torch._foreach_lerp_(floats_avg, floats_new, 1.0 - decay)  # one fused launch per dtype/device


def running_merge(
    running: Mapping[str, Tensor] | None,
    new: SourceLike,
    operator: str = "interpolation",
    base: SourceLike | None = None,
    **options: Any,
) -> dict[str, Tensor]:
    """One step of a running merge r ← merge(θ_t, r) (TIME's EMA-merge).

    ``running=None`` starts the merge: r = a copy of θ_t. Otherwise the models are ``[new, running]``,
    so interpolation ``weights=[α, 1 − α]`` gives r ← α·θ_t + (1 − α)·r, and ``weights=[1, t]`` at the
    t-th update (t from 1) keeps r the uniform mean of all checkpoints.

    Returns:
        The new running merge (a new dict; ``running`` is not modified).
    """
    if running is None:
        return merge("interpolation", [new])  # a copy, whatever ``new`` is (dict, file, source)
    return merge(operator, [new, running], base, **options)
