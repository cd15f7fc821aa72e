"""The statistics of a study as pure functions: means with t-intervals, differences paired by seed, verdicts,
the spread of a metric across variants, and Pareto fronts.

A study runs every variant with the same seeds, so a difference between variants is measured seed by seed
(d_s = Σ_v w_v · m(v, s), a contrast) and its interval comes from the n paired differences: the seed's own
noise (data order, batch mixture) cancels instead of widening the interval. Intervals are Student-t, the
right ones for the 3–5 seeds a study can afford: mean ± t_{1−α/2, n−1} · sd / √n, sd with n − 1 in the
denominator. A difference whose interval contains 0 is "no difference", never a finding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from scipy import stats as _scipy_stats

CONFIDENCE = 0.95
EXPECTATIONS = ("higher", "lower", "not_lower", "not_higher")


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided t-interval over ``n`` values (``low``/``high`` None when n < 2)."""

    mean: float
    low: float | None
    high: float | None
    n: int
    sd: float | None = None
    confidence: float = CONFIDENCE

    @property
    def half_width(self) -> float | None:
        return None if self.high is None else self.high - self.mean

    def contains(self, value: float) -> bool | None:
        """Whether ``value`` lies inside the interval (None when there is no interval)."""
        if self.low is None or self.high is None:
            return None
        return self.low <= value <= self.high

    def to_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "sd": self.sd,
                "confidence": self.confidence}


def t_quantile(confidence: float, dof: int) -> float:
    """t_{(1+c)/2, dof}: the multiplier of sd/√n for a two-sided interval of confidence ``c``.

    Raises:
        ValueError: dof < 1 or confidence outside (0, 1).
    """
    if dof < 1:
        raise ValueError(f"a t-interval needs at least 2 values (dof >= 1), got dof={dof}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(_scipy_stats.t.ppf((1 + confidence) / 2, dof))


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean of ``values`` with its Student-t interval: x̄ ± t_{(1+c)/2, n−1} · s / √n, s² = Σ(x − x̄)² / (n − 1).

    Args:
        values: the per-seed values (at least one).
        confidence: the interval's coverage (0.95).

    Returns:
        The :class:`Interval`; with one value, ``low``, ``high`` and ``sd`` are None.

    Raises:
        ValueError: no values, or a value that is not finite.
    """
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("t_interval needs at least one value")
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"t_interval got a value that is not finite: {vals}")
    n = len(vals)
    mean = sum(vals) / n
    if n < 2:
        return Interval(mean, None, None, 1, None, confidence)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = t_quantile(confidence, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd, confidence)


@dataclass(frozen=True)
class Difference:
    """A contrast between variants, paired by seed: the per-seed values and their t-interval."""

    interval: Interval
    seeds: tuple[int, ...]
    per_seed: tuple[float, ...]
    missing: dict[str, list[int]] = field(default_factory=dict)  # variant → seeds it lacks (left out of the pairs)

    def to_dict(self) -> dict:
        return {**self.interval.to_dict(), "seeds": list(self.seeds), "per_seed": list(self.per_seed),
                "missing": self.missing}


def paired_contrast(values: Mapping[str, Mapping[int, float]], weights: Mapping[str, float],
                    confidence: float = CONFIDENCE) -> Difference | None:
    """d_s = Σ_v w_v · values[v][s] for every seed s that all weighted variants have, with its t-interval.

    ``{"a": 1, "b": -1}`` is the paired difference a − b; ``{"a2": 1, "a1": -1, "b2": -1, "b1": 1}`` asks
    whether doubling pays off more for a than for b.

    Args:
        values: variant → {seed: value}.
        weights: variant → weight (variants with weight 0 are ignored).
        confidence: the interval's coverage.

    Returns:
        The :class:`Difference`, or None when no seed is shared by every weighted variant.

    Raises:
        KeyError: a weighted variant has no values at all (the message names it and the known variants).
    """
    used = {v: w for v, w in weights.items() if w != 0}
    unknown = [v for v in used if v not in values]
    if unknown:
        raise KeyError(f"contrast names {', '.join(map(repr, unknown))}, which has no results; "
                       f"variants with results: {', '.join(sorted(values)) or 'none'}")
    if not used:
        return None
    common = sorted(set.intersection(*(set(values[v]) for v in used)))
    if not common:
        return None
    per_seed = tuple(sum(w * float(values[v][s]) for v, w in used.items()) for s in common)
    missing = {v: sorted(set().union(*(set(values[u]) for u in used)) - set(values[v])) for v in used}
    return Difference(t_interval(per_seed, confidence), tuple(common), per_seed,
                      {v: s for v, s in missing.items() if s})


def verdict(interval: Interval, expect: str | None = None) -> str:
    """What an interval of a difference says, in words.

    Without an expectation: ``higher`` / ``lower`` (the interval excludes 0), ``no difference`` (it contains
    0) or ``one seed: no interval``. With one (``higher``, ``lower``, ``not_lower`` = at least as high,
    ``not_higher``): ``reproduced`` when the interval lies on the claimed side of 0 (for ``not_lower``: a
    difference that is not below 0, i.e. higher or no difference, and the word says which), ``not
    reproduced: no difference`` when it contains 0, ``not reproduced: opposite`` when it lies on the other
    side.

    Raises:
        ValueError: an unknown expectation (names the valid ones).
    """
    if expect is not None and expect not in EXPECTATIONS:
        raise ValueError(f"expect {expect!r} is unknown; valid: {', '.join(EXPECTATIONS)}")
    if interval.low is None or interval.high is None:
        return "one seed: no interval"
    side = "higher" if interval.low > 0 else "lower" if interval.high < 0 else "no difference"
    if expect is None:
        return side
    if expect in ("higher", "lower"):
        if side == expect:
            return "reproduced"
        return "not reproduced: no difference" if side == "no difference" else "not reproduced: opposite"
    bad = "lower" if expect == "not_lower" else "higher"
    if side == bad:
        return "not reproduced: opposite"
    return "reproduced (no difference, not worse)" if side == "no difference" else f"reproduced ({side})"


def spread(values: Mapping[str, float]) -> float:
    """max − min of a metric over variants (0 for one variant).

    Raises:
        ValueError: no values.
    """
    if not values:
        raise ValueError("spread needs at least one variant")
    return max(values.values()) - min(values.values())


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, both coordinates to be maximised, ordered by x.

    A point dominates another when it is at least as high on both coordinates and higher on one. Equal
    points are all kept.
    """
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (ox >= x and oy >= y) and (ox > x or oy > y) for j, (ox, oy) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def best_point(scores: Mapping[str, Sequence[float]]) -> str | None:
    """The key whose mean score is highest (the first such key on ties); None when no key has a score."""
    best, best_mean = None, -math.inf
    for key, vals in scores.items():
        if not vals:
            continue
        mean = sum(vals) / len(vals)
        if mean > best_mean:
            best, best_mean = key, mean
    return best


def midstream_minus_final_spread(trajectories: Mapping[str, Sequence[float]]) -> float | None:
    """How much more the variants differ along the stream than at its end, for one seed.

    With v_i the metric of each variant after evaluation i (i = 0 the zero-shot point, E − 1 the end):
    mean over the mid-stream evaluations i = 1..E−2 of (max_v − min_v of v_i), minus (max_v − min_v of
    v_{E−1}). Positive: the variants' paths part more than their end points do.

    Returns:
        The difference, or None when the trajectories have different lengths, fewer than 3 evaluations, or
        fewer than 2 variants.
    """
    lengths = {len(t) for t in trajectories.values()}
    if len(trajectories) < 2 or len(lengths) != 1 or lengths.pop() < 3:
        return None
    rows = list(zip(*trajectories.values()))  # per evaluation, every variant's value
    mid = [max(r) - min(r) for r in rows[1:-1]]
    return sum(mid) / len(mid) - (max(rows[-1]) - min(rows[-1]))
