"""Learning-rate schedules as pure functions of (task, step): per-task and meta schedules across tasks.

A run is a stream of ``T`` tasks of ``S`` optimizer steps each. Every schedule here maps
``(task t, step s)`` with ``0 <= t < T`` and ``0 <= s < S`` to a learning rate, from a frozen
:class:`ScheduleSpec`. There is no state: resuming at any (t, s) gives the same value.

Notation (used in every docstring below):

- ``η`` = ``spec.lr`` (the peak), ``η_min = lr_min_ratio · η`` (the floor), ``Δ = η − η_min``.
- ``W = ⌊warmup_frac · S⌋`` warmup steps (at most ``S − 1``); ``s = W`` is the first decay step and
  the step at which a task reaches its peak.
- ``c(q) = ½ (1 + cos(π q))``, the cosine shape: ``c(0) = 1``, ``c(1) = 0``.
- Warmup ramps linearly into the value ``v_W`` the decay curve has at ``s = W``:
  ``lr(s) = v_W · (s + 1) / (W + 1)`` for ``s < W`` — never 0, and the peak is hit exactly once.
- Every schedule but ``constant`` ends each task on ``η_min`` at ``s = S − 1`` whenever the task
  has a step after its peak (W < S − 1; and for ``wsd`` decay_frac > 0). A one-step task runs at
  its peak.

Schedules (FoMo-in-Flux, arXiv 2408.14471; the formulas of §6 of ``fif-facts.md``), by registry name:
``constant``, ``cosine`` (the reference default), ``autoregressive_cosine``, ``dynamic``, ``rsqrt``,
``rsqrt_autoregressive``, ``rsqrt_continued``, ``rsqrt_recovered`` and ``wsd``. Each function's
docstring gives its formula; ``docs/schedules.md`` has them all with a plot.

Use::

    spec = ScheduleSpec("autoregressive_cosine", lr=1e-5)
    lr = lr_at(spec, task=3, step=100, steps_per_task=1420, num_tasks=20)
    curve = stream_curve(spec, steps_per_task=1420, num_tasks=20)  # shape (20 * 1420,)
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

ANNEAL_SHAPES = ("linear", "cosine", "sqrt")


# ----------------------------------------------------------------------------------------------
# Spec and geometry


@dataclass(frozen=True)
class ScheduleSpec:
    """Everything a schedule needs besides the stream's shape (steps per task, number of tasks).

    Raises:
        ValueError: an unknown ``name`` (with the valid names) or an out-of-range field; every
            problem is listed at once.
    """

    name: str = field(default="cosine", metadata={"help": "Schedule name (see schedule_names())."})
    lr: float = field(default=1e-5, metadata={"help": "Peak learning rate η."})
    lr_min_ratio: float = field(default=0.001, metadata={"help": "Floor η_min as a fraction of lr (FiF: 0.001)."})
    warmup_frac: float = field(default=0.1, metadata={"help": "Warmup W as a fraction of each task's steps."})
    cooldown_frac: float = field(
        default=0.1, metadata={"help": "rsqrt family: final fraction of each task annealed to η_min."}
    )
    decay_frac: float = field(default=0.2, metadata={"help": "wsd: final fraction of each task decayed to η_min."})
    anneal_shape: str = field(
        default="linear", metadata={"help": "Shape of the wsd decay and rsqrt cooldown: linear, cosine, sqrt."}
    )

    def __post_init__(self) -> None:
        problems = []
        if self.name not in _REGISTRY:
            problems.append(unknown_schedule_message(self.name))
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"lr: {self.lr!r} must be a finite number > 0")
        if not 0.0 <= self.lr_min_ratio <= 1.0:
            problems.append(f"lr_min_ratio: {self.lr_min_ratio} must be in [0, 1]")
        for name in ("warmup_frac", "cooldown_frac"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                problems.append(f"{name}: {value} must be in [0, 1)")
        if not 0.0 <= self.decay_frac <= 1.0:
            problems.append(f"decay_frac: {self.decay_frac} must be in [0, 1]")
        if self.anneal_shape not in ANNEAL_SHAPES:
            problems.append(f"anneal_shape: {self.anneal_shape!r} is not one of {', '.join(ANNEAL_SHAPES)}")
        if problems:
            raise ValueError("invalid schedule spec:\n  - " + "\n  - ".join(problems))

    @property
    def lr_min(self) -> float:
        """η_min = lr_min_ratio · lr."""
        return self.lr_min_ratio * self.lr


def _frac_steps(frac: float, steps: int, round_up: bool = False) -> int:
    # The epsilon keeps float noise from moving a step (0.29 * 100 = 28.999999999999996).
    if round_up:
        return int(math.ceil(frac * steps - 1e-9))
    return int(math.floor(frac * steps + 1e-9))


@dataclass(frozen=True)
class TaskGeometry:
    """The step counts a schedule works with, for ``S`` steps per task.

    Attributes:
        steps_per_task: S.
        warmup_steps: W = min(⌊warmup_frac·S⌋, S − 1).
        cooldown_steps: C = min(⌈cooldown_frac·S⌉, S − 1 − W) (rsqrt family). Rounded up, so any
            positive fraction anneals at least one step; capped, so the peak step s = W is kept.
        decay_steps: D = min(⌈decay_frac·S⌉, S − 1 − W) (wsd), likewise.
        rsqrt_timescale: τ = max(W, 1), the rsqrt time constant (W = 0 would make √(W/n) zero).
    """

    steps_per_task: int
    warmup_steps: int
    cooldown_steps: int
    decay_steps: int
    rsqrt_timescale: int


def task_geometry(spec: ScheduleSpec, steps_per_task: int) -> TaskGeometry:
    """Warmup / cooldown / decay step counts of ``spec`` for tasks of ``steps_per_task`` steps.

    Raises:
        ValueError: ``steps_per_task < 1``.
    """
    if steps_per_task < 1:
        raise ValueError(f"steps_per_task: {steps_per_task} must be >= 1")
    S = steps_per_task
    W = min(_frac_steps(spec.warmup_frac, S), S - 1)
    return TaskGeometry(
        steps_per_task=S,
        warmup_steps=W,
        cooldown_steps=min(_frac_steps(spec.cooldown_frac, S, round_up=True), S - 1 - W),
        decay_steps=min(_frac_steps(spec.decay_frac, S, round_up=True), S - 1 - W),
        rsqrt_timescale=max(W, 1),
    )


# ----------------------------------------------------------------------------------------------
# Registry

Curve = Callable[[np.ndarray], np.ndarray]  # step array -> lr array, within one task
TaskCurve = Callable[[ScheduleSpec, int, np.ndarray, TaskGeometry], np.ndarray]  # (spec, task, steps, geometry)


@dataclass(frozen=True)
class _Entry:
    name: str
    summary: str
    fn: TaskCurve


_REGISTRY: dict[str, _Entry] = {}


def register_schedule(name: str, summary: str) -> Callable[[TaskCurve], TaskCurve]:
    """Register ``fn(spec, task, steps, geometry) -> lr per step`` under ``name`` (fails on duplicates)."""

    def wrap(fn: TaskCurve) -> TaskCurve:
        if name in _REGISTRY:
            raise ValueError(f"schedule {name!r} is registered twice ({_REGISTRY[name].fn.__name__}, {fn.__name__})")
        _REGISTRY[name] = _Entry(name, summary, fn)
        return fn

    return wrap


def schedule_names() -> list[str]:
    """Registered schedule names, in registration order (simplest first)."""
    return list(_REGISTRY)


def schedule_summaries() -> dict[str, str]:
    """Name → one-line description, for listings."""
    return {name: entry.summary for name, entry in _REGISTRY.items()}


def unknown_schedule_message(name: str) -> str:
    """``"unknown schedule 'x'; did you mean ...? Valid schedules: ..."``."""
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else "."
    return f"unknown schedule {name!r}{hint} Valid schedules: {', '.join(_REGISTRY)}"


# ----------------------------------------------------------------------------------------------
# Public evaluation


def _check_position(task: int, num_tasks: int) -> None:
    if num_tasks < 1:
        raise ValueError(f"num_tasks: {num_tasks} must be >= 1")
    if not 0 <= task < num_tasks:
        raise ValueError(f"task: {task} is outside the stream's tasks 0..{num_tasks - 1}")


def task_curve(spec: ScheduleSpec, task: int, steps_per_task: int, num_tasks: int) -> np.ndarray:
    """The learning rate at every step of one task, shape ``(steps_per_task,)``, float64.

    Raises:
        ValueError: a task outside ``0..num_tasks-1`` or ``steps_per_task < 1``.
    """
    _check_position(task, num_tasks)
    geometry = task_geometry(spec, steps_per_task)
    steps = np.arange(steps_per_task, dtype=np.float64)
    return _REGISTRY[spec.name].fn(spec, task, steps, geometry)


def lr_at(spec: ScheduleSpec, task: int, step: int, steps_per_task: int, num_tasks: int) -> float:
    """The learning rate at ``step`` (0-based, within the task) of ``task`` (0-based).

    Args:
        spec: the schedule.
        task: task index t, ``0 <= t < num_tasks``.
        step: step index s within the task, ``0 <= s < steps_per_task``.
        steps_per_task: S, the task's optimizer steps (from the budget).
        num_tasks: T, the stream's length.

    Returns:
        The learning rate as a Python float.

    Raises:
        ValueError: a position outside the stream.
    """
    _check_position(task, num_tasks)
    if not 0 <= step < steps_per_task:
        raise ValueError(f"step: {step} is outside the task's steps 0..{steps_per_task - 1}")
    geometry = task_geometry(spec, steps_per_task)
    return float(_REGISTRY[spec.name].fn(spec, task, np.array([float(step)]), geometry)[0])


def stream_curve(spec: ScheduleSpec, steps_per_task: int, num_tasks: int) -> np.ndarray:
    """The learning rate at every step of the stream, shape ``(num_tasks * steps_per_task,)``.

    Entry ``t · S + s`` equals ``lr_at(spec, t, s, S, T)``.
    """
    _check_position(0, num_tasks)
    return np.concatenate([task_curve(spec, t, steps_per_task, num_tasks) for t in range(num_tasks)])


def task_peaks(spec: ScheduleSpec, steps_per_task: int, num_tasks: int) -> np.ndarray:
    """Each task's largest learning rate, shape ``(num_tasks,)`` (for checks and tables)."""
    return stream_curve(spec, steps_per_task, num_tasks).reshape(num_tasks, steps_per_task).max(axis=1)


# ----------------------------------------------------------------------------------------------
# Building blocks (all vectorised over the step array ``s``)


def cosine_shape(q: np.ndarray | float) -> np.ndarray:
    """c(q) = ½ (1 + cos(π q)): 1 at q = 0, 0 at q = 1."""
    return 0.5 * (1.0 + np.cos(np.pi * np.asarray(q, dtype=np.float64)))


def _anneal_shape(q: np.ndarray, shape: str) -> np.ndarray:
    """Fraction of the starting value left at anneal progress q ∈ [0, 1]: 1 − q, c(q) or 1 − √q."""
    if shape == "linear":
        return 1.0 - q
    if shape == "cosine":
        return cosine_shape(q)
    return 1.0 - np.sqrt(q)


def _warmup_into(s: np.ndarray, warmup_steps: int, decay: Curve) -> np.ndarray:
    """``decay(s)`` for s ≥ W; before that the ramp ``decay(W) · (s + 1) / (W + 1)``."""
    W = warmup_steps
    after = decay(np.maximum(s, W))
    if W == 0:
        return after
    target = decay(np.array([float(W)]))[0]
    return np.where(s < W, target * (s + 1.0) / (W + 1.0), after)


def _constant_curve(value: float) -> Curve:
    return lambda s: np.full_like(s, value)


def _cosine_curve(g: TaskGeometry, peak: float, floor: float) -> Curve:
    """s ↦ floor + c((s − W) / (S − 1 − W)) · (peak − floor): peak at s = W, floor at s = S − 1."""
    span = max(g.steps_per_task - 1 - g.warmup_steps, 1)
    return lambda s: floor + cosine_shape((s - g.warmup_steps) / span) * (peak - floor)


def _rsqrt_curve(peak: float, floor: float, clock_offset: int, timescale: int) -> Curve:
    """s ↦ floor + √(τ / max(n, τ)) · (peak − floor) at clock n = clock_offset + s."""
    return lambda s: floor + np.sqrt(timescale / np.maximum(clock_offset + s, float(timescale))) * (peak - floor)


def _anneal_tail(
    s: np.ndarray, start: int, length: int, main: Curve, floor: float, shape: str
) -> np.ndarray:
    """``main(s)`` before ``start``; from there anneal ``main(start)`` to ``floor`` over ``length`` steps.

    Step ``start + k`` (k = 0..length−1) has progress q = (k + 1) / length, so the last step is ``floor``.
    """
    if length == 0:
        return main(s)
    v_start = main(np.array([float(start)]))[0]
    q = np.clip((s - start + 1.0) / length, 0.0, 1.0)
    tail = floor + _anneal_shape(q, shape) * (v_start - floor)
    return np.where(s >= start, tail, main(np.minimum(s, start)))


def autoregressive_peak_factor(task: int, steps_per_task: int, warmup_steps: int) -> float:
    """The autoregressive cosine's peak of task t as a fraction of Δ (FiF's formula, §6).

    ``f_t = c((t (S − W) + 1) / ((t + 1)(S − W)))`` for t ≥ 1 and ``f_0 = 1``, so that
    ``p_t = η_min + f_t · Δ``. For large S this is ≈ c(t / (t + 1)) = sin²(π / (2 (t + 1))):
    1, 0.5, 0.25, 0.146, 0.095, 0.067, … (≈ π² / (4 (t + 1)²) for large t; 0.0062 at t = 19).
    """
    if task == 0:
        return 1.0
    span = steps_per_task - warmup_steps
    return float(cosine_shape((task * span + 1.0) / ((task + 1.0) * span)))


def rsqrt_autoregressive_peak_factor(task: int, steps_per_task: int, timescale: int) -> float:
    """√((t + 1) τ / (t S + τ)): 1 at t = 0, then ≈ √(2τ / (S + τ)), … → √(τ / S) for large t."""
    return math.sqrt((task + 1.0) * timescale / (task * steps_per_task + timescale))


# ----------------------------------------------------------------------------------------------
# The schedules


@register_schedule("constant", "η after an optional linear warmup (warmup_frac=0 for none), every task")
def constant(spec: ScheduleSpec, task: int, s: np.ndarray, g: TaskGeometry) -> np.ndarray:
    """lr(t, s) = η for s ≥ W (linear warmup before)."""
    return _warmup_into(s, g.warmup_steps, _constant_curve(spec.lr))


@register_schedule("cosine", "per task: linear warmup to η, cosine to η_min (FiF's default)")
def cosine(spec: ScheduleSpec, task: int, s: np.ndarray, g: TaskGeometry) -> np.ndarray:
    """Every task: warmup to η, then lr(t, s) = η_min + c((s − W) / (S − 1 − W)) · Δ."""
    return _warmup_into(s, g.warmup_steps, _cosine_curve(g, spec.lr, spec.lr_min))


@register_schedule("autoregressive_cosine", "per task: warmup to the meta peak p_t, cosine to η_min")
def autoregressive_cosine(spec: ScheduleSpec, task: int, s: np.ndarray, g: TaskGeometry) -> np.ndarray:
    """FiF's autoregressive cosine meta schedule.

    Task t warms up to ``p_t = η_min + c((t (S − W) + 1) / ((t + 1)(S − W))) · Δ`` (``p_0 = η``) and
    then runs its own full cosine from p_t to η_min:
    ``lr(t, s) = η_min + c((s − W) / (S − 1 − W)) · (p_t − η_min)``.

    p_t is the value a single cosine spanning the decay steps of tasks 0..t would have one step into
    task t's share — the peak a model would see had it known at task t that the stream ends there.
    Measured at S = 1420, W = 142, lr_min_ratio = 0.001: p_t / η = 1, 0.4999, 0.2504, 0.1471,
    0.0963, 0.0678, …, 0.0071 at t = 19 — the paper's "1, 0.5, 0.25, 0.15" for the first tasks, but
    the peaks keep falling like 1 / t² (see :func:`autoregressive_peak_factor`), so late tasks of a
    long stream train at well under 1 % of η.
    """
    factor = autoregressive_peak_factor(task, g.steps_per_task, g.warmup_steps)
    peak = spec.lr_min + factor * (spec.lr - spec.lr_min)
    return _warmup_into(s, g.warmup_steps, _cosine_curve(g, peak, spec.lr_min))


@register_schedule("dynamic", "task t follows the tail of one cosine spanning tasks 0..t")
def dynamic(spec: ScheduleSpec, task: int, s: np.ndarray, g: TaskGeometry) -> np.ndarray:
    """FiF's dynamic meta schedule: one global cosine, re-extended at every task.

    Within task t the decay steps follow a single cosine whose length is the decay steps of tasks
    0..t, from the position where tasks 0..t−1 left off, with a per-task linear warmup into it::

        L_t = (t + 1)(S − W) − 1,   n = t (S − W) + (s − W),
        lr(t, s) = η_min + c(n / L_t) · Δ          for s ≥ W.

    Warmup steps do not advance the cosine, so task 0 equals ``cosine`` and W = 0 gives exactly "a
    cosine of length (t + 1) S from position t S". Every task ends on η_min; task t starts its decay
    at η_min + c(t (S − W) / L_t) · Δ ≈ the autoregressive peak p_t, but decays along the flat tail of
    the long cosine instead of a fresh full cosine.
    """
    span = g.steps_per_task - g.warmup_steps
    length = max((task + 1) * span - 1, 1)

    def decay(x: np.ndarray) -> np.ndarray:
        position = task * span + (x - g.warmup_steps)
        return spec.lr_min + cosine_shape(position / length) * (spec.lr - spec.lr_min)

    return _warmup_into(s, g.warmup_steps, decay)


def _rsqrt_task(
    spec: ScheduleSpec, s: np.ndarray, g: TaskGeometry, main: Curve, warmup_steps: int
) -> np.ndarray:
    """Warm up into ``main``, follow it, anneal the final C steps to η_min."""
    start = g.steps_per_task - g.cooldown_steps

    def annealed(x: np.ndarray) -> np.ndarray:
        return _anneal_tail(x, start, g.cooldown_steps, main, spec.lr_min, spec.anneal_shape)

    return _warmup_into(s, warmup_steps, annealed)


@register_schedule("rsqrt", "per task: warmup to η, η_min + √(τ/s)·Δ, final cooldown to η_min")
def rsqrt(spec: ScheduleSpec, task: int, s: np.ndarray, g: TaskGeometry) -> np.ndarray:
    """Inverse-square-root ("infinite") schedule, restarted every task.

    Warmup to η, then ``lr(t, s) = η_min + √(τ / s) · Δ`` with τ = max(W, 1) (so s = W gives η),
    then over the final C = ⌈cooldown_frac · S⌉ steps anneal (linearly by default) from the value at
    s = S − C to η_min at s = S − 1.
    """
    return _rsqrt_task(spec, s, g, _rsqrt_curve(spec.lr, spec.lr_min, 0, g.rsqrt_timescale), g.warmup_steps)


@register_schedule("rsqrt_autoregressive", "rsqrt with task peaks η_min + √((t+1)τ/(tS+τ))·Δ")
def rsqrt_autoregressive(spec: ScheduleSpec, task: int, s: np.ndarray, g: TaskGeometry) -> np.ndarray:
    """rsqrt with FiF's autoregressive per-task peaks.

    Task t warms up to ``p_t = η_min + √((t + 1) τ / (t S + τ)) · Δ`` (``p_0 = η``), decays as
    ``η_min + √(τ / s) · (p_t − η_min)`` on its own clock, and cools down like ``rsqrt``.
    The factor is √(t + 1) times the uninterrupted rsqrt's value at global step t S + τ (see
    ``rsqrt_recovered``); for large t it tends to √(τ / S) (≈ 0.32 at warmup_frac 0.1).
    """
    factor = rsqrt_autoregressive_peak_factor(task, g.steps_per_task, g.rsqrt_timescale)
    peak = spec.lr_min + factor * (spec.lr - spec.lr_min)
    return _rsqrt_task(spec, s, g, _rsqrt_curve(peak, spec.lr_min, 0, g.rsqrt_timescale), g.warmup_steps)


@register_schedule("rsqrt_continued", "one rsqrt across tasks, resumed where each cooldown branched off")
def rsqrt_continued(spec: ScheduleSpec, task: int, s: np.ndarray, g: TaskGeometry) -> np.ndarray:
    """One rsqrt decay continued across tasks; no re-warm after task 0.

    The cooldown is a side branch: the main clock n advances only on non-cooldown steps, and task
    t ≥ 1 starts exactly where task t − 1's main phase stopped (its pre-cooldown value)::

        n = t (S − C) + s,   lr(t, s) = η_min + √(τ / n) · Δ     for s < S − C,

    then the usual cooldown to η_min. Task 0 (warmup to η) equals ``rsqrt``; task t ≥ 1 has no
    warmup and starts at η_min + √(τ / (t (S − C))) · Δ.
    """
    clock_offset = task * (g.steps_per_task - g.cooldown_steps)
    main = _rsqrt_curve(spec.lr, spec.lr_min, clock_offset, g.rsqrt_timescale)
    return _rsqrt_task(spec, s, g, main, g.warmup_steps if task == 0 else 0)


@register_schedule("rsqrt_recovered", "one rsqrt on the stream's clock; each task re-warms back onto it")
def rsqrt_recovered(spec: ScheduleSpec, task: int, s: np.ndarray, g: TaskGeometry) -> np.ndarray:
    """One rsqrt on the global clock, re-warmed every task back to its uninterrupted value.

    With the global step n = t S + s (warmups and cooldowns count as elapsed time), every task
    warms up linearly to ``R(t S + W)`` and then follows ``R(n) = η_min + √(τ / n) · Δ`` until
    its cooldown. The peak of task t is η_min + √(τ / (t S + W)) · Δ, a factor √(t + 1) below
    ``rsqrt_autoregressive``'s; task 0 equals ``rsqrt``.
    """
    main = _rsqrt_curve(spec.lr, spec.lr_min, task * g.steps_per_task, g.rsqrt_timescale)
    return _rsqrt_task(spec, s, g, main, g.warmup_steps)


@register_schedule("wsd", "per task: warmup, stable at η, final decay_frac annealed to η_min")
def wsd(spec: ScheduleSpec, task: int, s: np.ndarray, g: TaskGeometry) -> np.ndarray:
    """Warmup-stable-decay, restarted every task.

    Warmup to η, hold η, and over the final D = ⌈decay_frac · S⌉ steps anneal to η_min:
    step S − D + k (k = 0..D−1) has progress q = (k + 1) / D and lr = η_min + a(q) · Δ, with
    a(q) = 1 − q (linear, default), c(q) (cosine) or 1 − √q (sqrt), per ``anneal_shape``.
    """
    start = g.steps_per_task - g.decay_steps

    def stable_then_decay(x: np.ndarray) -> np.ndarray:
        return _anneal_tail(x, start, g.decay_steps, _constant_curve(spec.lr), spec.lr_min, spec.anneal_shape)

    return _warmup_into(s, g.warmup_steps, stable_then_decay)
