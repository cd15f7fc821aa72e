"""Merging over time: weights for a checkpoint history, in-place EMA, the running merge, and the run's
:class:`TemporalMerger`.

FiF (arXiv 2408.14471) and TIME (Dziadzio et al. 2025, arXiv 2412.06712) merge the checkpoints a stream
produces: offline (all checkpoints so far, weighted by a scheme), as a running merge r ← merge(θ_t, r)
after each task (EMA-merge), or per step (online EMA, θ_ema ← d·θ_ema + (1 − d)·θ). The functions are
pure; :class:`TemporalMerger` applies them inside a run (config section ``merge``: what each task trains
from, what is deployed) and keeps the checkpoint history on disk.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from fif.merge.core import build_options, get_operator, merge
from fif.merge.depth import LinesOptions
from fif.merge.sources import MergeError, SourceLike

# Unnormalised weight of checkpoint i = 1..n (1 oldest, n newest) under each scheme (the reference's
# offline-merge schemes: polynomial powers, base-2 exponential and log, each also reversed).
_BASE_SCHEMES: dict[str, Callable[[int, int], float]] = {
    "uniform": lambda i, n: 1.0,
    "linear": lambda i, n: float(i),
    "sqrt": lambda i, n: math.sqrt(i),
    "quadratic": lambda i, n: float(i**2),
    "cubic": lambda i, n: float(i**3),
    "fifth": lambda i, n: float(i**5),
    "tenth": lambda i, n: float(i**10),
    "exponential": lambda i, n: 2.0 ** (i - n),  # each checkpoint counts twice its predecessor
    "log": lambda i, n: math.log1p(i),  # ln(1 + i): ln(i) would give the oldest checkpoint weight 0
}


def _reversed(scheme: Callable[[int, int], float]) -> Callable[[int, int], float]:
    return lambda i, n: scheme(n - i + 1, n)  # the same weights, oldest heaviest


_SCHEMES: dict[str, Callable[[int, int], float]] = {
    **_BASE_SCHEMES,
    **{f"{name}_reversed": _reversed(f) for name, f in _BASE_SCHEMES.items() if name != "uniform"},
    "reversed": _reversed(_BASE_SCHEMES["linear"]),  # the older name of linear_reversed
}

HISTORY_SCHEMES = tuple(_SCHEMES)


def history_weights(scheme: str, n: int) -> list[float]:
    """Interpolation weights for a history of n checkpoints, oldest first, summing to 1.

    With i = 1..n (n the newest): uniform 1; linear i; sqrt √i; quadratic i²; cubic i³; fifth i⁵;
    tenth i¹⁰; exponential 2^(i−n) (each checkpoint twice the weight of the one before); log ln(1 + i).
    ``<scheme>_reversed`` gives checkpoint i the weight of checkpoint n − i + 1 (oldest heaviest);
    ``reversed`` is ``linear_reversed``.

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


# ----------------------------------------------------------------------------------------------
# Merging inside a run. Unlike the functions above, the TemporalMerger keeps state (the running merge,
# the online EMA) and writes the run's checkpoint history; the runner composes it with any update method.


# Options the merger sets itself, with the config keys that control them.
_RESERVED_OPTIONS = {
    "interpolation": ("weights", "merge.weights (scheme for init/deploy=all) and merge.alpha (two models)"),
    "slerp": ("t", "merge.alpha (t = 1 − alpha)"),
}


def _not_one_of(key: str, value: Any, choices: tuple[str, ...] | list[str]) -> list[str]:
    if value in choices:
        return []
    close = difflib.get_close_matches(str(value), list(choices), n=2, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
    return [f"{key}: {value!r} is not valid{hint} Valid: {', '.join(choices)}"]


def merge_config_problems(config: Any) -> list[str]:
    """Every problem of a ``merge`` config section (:class:`fif.config.MergeConfig`), or an empty list.

    Checks the axes, the operator and its options (unknown options get the nearest names), the weighting
    scheme, alpha, the EMA decay, LiNeS, and which operators can do what the axes ask of them.
    """
    p = _not_one_of("merge.init", config.init, MERGE_INITS) + _not_one_of("merge.deploy", config.deploy, MERGE_DEPLOYS)
    p += _not_one_of("merge.weights", config.weights, HISTORY_SCHEMES)
    if not 0.0 <= config.alpha <= 1.0:
        p.append(f"merge.alpha: {config.alpha} must be in [0, 1] (the newest model's weight)")
    if not 0.0 <= config.ema_decay <= 1.0:
        p.append(f"merge.ema_decay: {config.ema_decay} must be in [0, 1] (FiF: 0.999)")
    try:
        op = get_operator(config.operator)
    except MergeError as e:
        return p + [f"merge.operator: {e}"]
    reserved = _RESERVED_OPTIONS.get(op.name)
    if reserved is not None and reserved[0] in config.options:
        p.append(f"merge.options.{reserved[0]}: set by the merge axes for {op.name}; use {reserved[1]}")
    else:
        try:
            build_options(op.name, config.options)
        except MergeError as e:
            p.append(f"merge.options: {e}")
    if config.weights != "uniform" and op.name != "interpolation":
        p.append(f"merge.weights={config.weights!r} weights checkpoints of the interpolation operator, not {op.name!r}")
    if config.lines is not None:
        if not op.task_vectors:
            p.append(f"merge.lines: LiNeS scales task vectors; operator {op.name!r} has none (use e.g. task_arithmetic)")
        else:
            try:
                LinesOptions(**config.lines)
            except (TypeError, MergeError) as e:
                p.append(f"merge.lines: {e} (give {{alpha: 0.5, beta: 0.5, schedule: linear}})")
    axes = {config.init, config.deploy}
    if config.include_zero_shot and "all" not in axes:
        p.append("merge.include_zero_shot: merges θ0 into init/deploy=all; neither axis is all (e.g. merge.preset=offline_merge)")
    if "all" in axes and op.max_models is not None:
        p.append(
            f"merge.operator: {op.name!r} merges at most {op.max_models} models, but init/deploy=all merges every "
            f"task checkpoint; use interpolation or a task-vector operator"
        )
    if config.deploy == "last_zeroshot" and op.task_vectors and op.min_models > 1:
        p.append(f"merge.operator: {op.name!r} needs {op.min_models} task vectors; deploy=last_zeroshot has one")
    return p


# Temporal merging (docs/merging.md "Merging inside runs"). A preset fills the axes the user left unset.
MERGE_INITS = ("zeroshot", "last", "ema", "all", "online_ema")


MERGE_DEPLOYS = ("last", "ema", "all", "last_zeroshot", "online_ema")
