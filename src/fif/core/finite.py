"""Non-finite values (NaN, ±inf) in weights and optimizer state.

A diverged model must never be written as a result or loaded as one: the training loop checks its
weights and optimizer state at every logging interval with :func:`all_finite` (one device reduction,
read at the interval's existing host sync), the runner checks again before a checkpoint or the final
weights are written, and ``fif eval`` / ``fif merge`` check the weights they load or write with
:func:`nonfinite_counts` (which names the tensors in the message).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.nn.utils import get_total_norm


class NonFiniteWeightsError(ValueError):
    """Weights or optimizer state hold NaN or inf values (the message names the file or tensors and the fix)."""


def is_mask(name: str) -> bool:
    """Tensors named ``...mask`` (attention masks) hold -inf by design and are never checked."""
    return name.rsplit(".", 1)[-1].endswith("mask")


def float_tensors(tensors: Iterable[object]) -> list[torch.Tensor]:
    """The floating-point tensors among ``tensors`` (integer and bool tensors cannot be non-finite)."""
    return [t for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]


def checked_tensors(state: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """The tensors of a state dict that must be finite: its floating-point ones except masks (:func:`is_mask`)."""
    return float_tensors(t for name, t in state.items() if not is_mask(name))


def all_finite(tensors: Iterable[object]) -> torch.Tensor:
    """Whether every value of every floating-point tensor is finite, as a bool tensor on their device.

    No host sync: the max-abs (inf-norm) reduction propagates NaN and inf, so the caller reads one
    value when it syncs anyway. Tensors on several devices are reduced per device by
    :func:`torch.nn.utils.get_total_norm`. Sharded tensors (FSDP's DTensors) are checked shard by shard
    and the answer reduced over the ranks (a collective: every rank calls it).
    """
    floats = float_tensors(tensors)
    if not floats:
        return torch.ones((), dtype=torch.bool)
    sharded = any(isinstance(t, DTensor) for t in floats)
    with torch.no_grad():
        local = [(t.to_local() if isinstance(t, DTensor) else t).detach() for t in floats]
        local = [t for t in local if t.numel()]  # a rank's shard of a small tensor may be empty
        norm = get_total_norm(local, norm_type=math.inf) if local else torch.zeros((), device=floats[0].device)
        if sharded and dist.is_initialized():  # FSDP: every rank holds other shards; all ranks get one answer
            dist.all_reduce(norm, op=dist.ReduceOp.MAX)
        return torch.isfinite(norm)


def optimizer_tensors(optimizer: torch.optim.Optimizer | None) -> list[torch.Tensor]:
    """The tensors an optimizer keeps per parameter (moments, step counts)."""
    if optimizer is None:
        return []
    return [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]


def nonfinite_counts(tensors: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Per tensor name, how many values are NaN or inf (only names with any, masks skipped), in the mapping's order."""
    out = {}
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() and not is_mask(name):
            n = int((~torch.isfinite(t)).sum())
            if n:
                out[name] = n
    return out


def describe_nonfinite(counts: Mapping[str, int], limit: int = 3) -> str:
    """``"12 NaN/inf values in 2 tensors (visual.conv1.weight: 10, ...)"`` for a message."""
    shown = ", ".join(f"{k}: {v}" for k, v in list(counts.items())[:limit])
    more = ", ..." if len(counts) > limit else ""
    return f"{sum(counts.values())} NaN/inf values in {len(counts)} tensors ({shown}{more})"
