"""FiF's stream metrics as pure functions over per-dataset scores (percent).

A_KA: macro-average over adaptation datasets (knowledge accumulation);
A_ZS: macro-average over evaluation-only datasets (zero-shot retention);
GM  = √(A_KA · A_ZS) (Roth, Udandarao et al. 2024, §3).

Per-dataset metrics (change from zero-shot, forgetting, backward transfer) work on a
:class:`ScoreMatrix` (evaluation × dataset), avalanche-style.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np


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


# ----------------------------------------------------------------------------------------------
# The (evaluation × dataset) score matrix and the per-dataset metrics over it


@dataclass(frozen=True)
class ScoreMatrix:
    """Scores (percent) of every evaluation of a run on every dataset.

    Attributes:
        tasks: per row, the task after which it was evaluated (-1 = the zero-shot point, row 0).
        datasets: per column, the dataset name.
        roles: dataset → ``adaptation`` / ``eval_only``.
        scores: (E, D) float array; NaN where a dataset was not evaluated.
    """

    tasks: tuple[int, ...]
    datasets: tuple[str, ...]
    roles: Mapping[str, str]
    scores: np.ndarray

    def __post_init__(self) -> None:
        if self.scores.shape != (len(self.tasks), len(self.datasets)):
            raise ValueError(
                f"scores has shape {self.scores.shape}, expected ({len(self.tasks)} evaluations, {len(self.datasets)} datasets)"
            )

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[int, Mapping[str, float]]], roles: Mapping[str, str]) -> "ScoreMatrix":
        """Build from ``(task, {dataset: score})`` rows; columns in first-seen order."""
        names: list[str] = []
        for _, scores in rows:
            names.extend(n for n in scores if n not in names)
        mat = np.full((len(rows), len(names)), np.nan)
        for i, (_, scores) in enumerate(rows):
            for j, n in enumerate(names):
                if n in scores and scores[n] is not None:
                    mat[i, j] = float(scores[n])
        return cls(tuple(int(t) for t, _ in rows), tuple(names), dict(roles), mat)

    def column(self, dataset: str) -> np.ndarray:
        return self.scores[:, self.datasets.index(dataset)]

    def row_after(self, task: int) -> int | None:
        """Row index of the evaluation after ``task`` (None if the run never got there)."""
        return self.tasks.index(task) if task in self.tasks else None


def change_from_zero_shot(m: ScoreMatrix) -> np.ndarray:
    """Δ[e, d] = S[e, d] − S[0, d]: each evaluation's gain (+) or loss (−) over the zero-shot row."""
    if not len(m.tasks):
        return m.scores.copy()
    return m.scores - m.scores[:1]


def learned_tasks(task_datasets: Sequence[Sequence[str]]) -> dict[str, tuple[int, int]]:
    """dataset → (first task, last task) whose concepts include it, from each task's dataset list."""
    out: dict[str, tuple[int, int]] = {}
    for t, names in enumerate(task_datasets):
        for n in names:
            first = out.get(n, (t, t))[0]
            out[n] = (first, t)
    return out


def forgetting(m: ScoreMatrix, learned_at: Mapping[str, int]) -> dict[str, float | None]:
    """Forgetting per dataset: f_d = max_{e ∈ E_d} S[e, d] − S[final, d] (Chaudhry et al. 2018).

    E_d is every evaluation from the one after task ``learned_at[d]`` up to, not including, the final
    evaluation. Positive = the dataset was known better at some point than at the end. None where E_d
    is empty (learned in the last task, or the run stopped before) or the scores are missing.
    """
    out: dict[str, float | None] = {}
    final = len(m.tasks) - 1
    for d, task in learned_at.items():
        start = m.row_after(task)
        if d not in m.datasets or start is None or start >= final:
            out[d] = None
            continue
        col = m.column(d)
        earlier = col[start:final]
        earlier = earlier[~np.isnan(earlier)]
        out[d] = None if earlier.size == 0 or np.isnan(col[final]) else float(earlier.max() - col[final])
    return out


def backward_transfer(m: ScoreMatrix, learned_at: Mapping[str, int]) -> dict[str, float | None]:
    """Backward transfer per dataset: b_d = S[final, d] − S[after task learned_at[d], d] (Lopez-Paz & Ranzato 2017).

    With one dataset per task this is GEM's BWT term; pass each dataset's *last* training task. Negative =
    later tasks hurt it. None when the dataset was learned in the final evaluated task or not at all.
    """
    out: dict[str, float | None] = {}
    final = len(m.tasks) - 1
    for d, task in learned_at.items():
        row = m.row_after(task)
        if d not in m.datasets or row is None or row >= final:
            out[d] = None
            continue
        col = m.column(d)
        v = col[final] - col[row]
        out[d] = None if np.isnan(v) else float(v)
    return out


def mean_defined(values: Mapping[str, float | None]) -> float | None:
    """Mean of the non-None values (None if there are none)."""
    vals = [v for v in values.values() if v is not None]
    return sum(vals) / len(vals) if vals else None
