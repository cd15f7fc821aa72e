"""FiF's stream metrics as pure functions over per-dataset scores (percent).

A_KA: macro-average over adaptation datasets (knowledge accumulation);
A_ZS: macro-average over evaluation-only datasets (zero-shot retention);
GM  = √(A_KA · A_ZS) (Roth, Udandarao et al. 2024, §3).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence


def macro_mean(scores: Mapping[str, float], names: Sequence[str]) -> float | None:
    """Mean of ``scores[n]`` over ``names`` present in ``scores`` (None if none are)."""
    vals = [scores[n] for n in names if n in scores]
    return sum(vals) / len(vals) if vals else None


def geometric_mean(a_ka: float | None, a_zs: float | None) -> float | None:
    if a_ka is None or a_zs is None:
        return None
    return math.sqrt(max(a_ka, 0.0) * max(a_zs, 0.0))


def stream_point(scores: Mapping[str, float], roles: Mapping[str, str]) -> dict[str, float | None]:
    """{a_ka, a_zs, gm} of one evaluation from per-dataset scores and dataset roles."""
    a_ka = macro_mean(scores, [n for n, r in roles.items() if r == "adaptation"])
    a_zs = macro_mean(scores, [n for n, r in roles.items() if r == "eval_only"])
    return {"a_ka": a_ka, "a_zs": a_zs, "gm": geometric_mean(a_ka, a_zs)}


def trajectory_mean(points: Sequence[Mapping[str, float | None]], keys=("a_ka", "a_zs", "gm")) -> dict[str, float | None]:
    """Mean of each metric over the trajectory (the zero-shot point included, as FiF reports)."""
    out: dict[str, float | None] = {}
    for k in keys:
        vals = [p[k] for p in points if p.get(k) is not None]
        out[k] = sum(vals) / len(vals) if vals else None  # type: ignore[operator]
    return out
