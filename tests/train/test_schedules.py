"""Learning-rate schedules at their defining points, against the formulas written out independently here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fif.config import TrainConfig, load_config
from fif.config.components import schedule_from_config
from fif.core.typed import ConfigError
from fif.results.report.schedule import plot_schedules
from fif.train.schedules import (
    ScheduleSpec,
    lr_at,
    register_schedule,
    schedule_names,
    stream_curve,
    task_curve,
    task_geometry,
    task_peaks,
)

S, T, LR = 1420, 20, 1e-5  # FiF's default stream: 28,400 steps over 20 tasks
W = 142  # ⌊0.1 · 1420⌋
C = 142  # ⌈0.1 · 1420⌉ (rsqrt cooldown)
LR_MIN = 1e-3 * LR
DELTA = LR - LR_MIN
ALL = schedule_names()
DECAYING = [n for n in ALL if n != "constant"]


def curve(name: str, steps: int = S, tasks: int = T, **kw) -> np.ndarray:
    """(tasks, steps) array of learning rates."""
    return stream_curve(ScheduleSpec(name, lr=LR, **kw), steps, tasks).reshape(tasks, steps)


def cos_shape(q: float) -> float:
    return 0.5 * (1 + math.cos(math.pi * q))


# ---------------------------------------------------------------------------------------------- registry, spec


def test_registry_has_every_schedule_of_the_study():
    assert ALL == [
        "constant",
        "cosine",
        "autoregressive_cosine",
        "dynamic",
        "rsqrt",
        "rsqrt_autoregressive",
        "rsqrt_continued",
        "rsqrt_recovered",
        "wsd",
    ]


def test_unknown_name_lists_the_valid_ones_and_the_nearest():
    with pytest.raises(ValueError, match="did you mean cosine.*Valid schedules: constant, cosine"):
        ScheduleSpec("cosin")


def test_duplicate_registration_fails():
    with pytest.raises(ValueError, match="registered twice"):
        register_schedule("cosine", "again")(lambda spec, task, s, g: s)


def test_spec_reports_every_problem_at_once():
    with pytest.raises(ValueError) as err:
        ScheduleSpec("cosine", lr=-1, lr_min_ratio=2, warmup_frac=1.0, anneal_shape="cubic")
    for key in ("lr:", "lr_min_ratio:", "warmup_frac:", "anneal_shape:"):
        assert key in str(err.value)


def test_geometry_of_the_default_stream():
    g = task_geometry(ScheduleSpec("rsqrt"), S)
    assert (g.warmup_steps, g.cooldown_steps, g.decay_steps, g.rsqrt_timescale) == (W, C, 284, W)
    g = task_geometry(ScheduleSpec("rsqrt", warmup_frac=0.29), 100)
    assert g.warmup_steps == 29  # 0.29 * 100 = 28.999999999999996 in floats
    tiny = task_geometry(ScheduleSpec("rsqrt"), 1)
    assert (tiny.warmup_steps, tiny.cooldown_steps, tiny.rsqrt_timescale) == (0, 0, 1)


@pytest.mark.parametrize("kwargs", [dict(task=20), dict(task=-1), dict(step=S), dict(step=-1)])
def test_positions_outside_the_stream_are_rejected(kwargs):
    where = dict(task=0, step=0) | kwargs
    with pytest.raises(ValueError, match="outside"):
        lr_at(ScheduleSpec(), where["task"], where["step"], S, T)


# ---------------------------------------------------------------------------------------------- every schedule


@pytest.mark.parametrize("name", ALL)
def test_lr_at_matches_stream_curve(name):
    spec = ScheduleSpec(name, lr=LR)
    full = stream_curve(spec, S, T)
    assert full.shape == (S * T,)
    for t, s in [(0, 0), (0, W - 1), (0, W), (1, 0), (3, 700), (7, S - C), (19, S - 1)]:
        assert lr_at(spec, t, s, S, T) == full[t * S + s]
    np.testing.assert_array_equal(task_curve(spec, 5, S, T), full[5 * S : 6 * S])


@pytest.mark.parametrize("name", ALL)
def test_positive_bounded_and_peaks_at_warmup_end(name):
    lrs = curve(name)
    assert np.all(np.isfinite(lrs)) and np.all(lrs > 0) and np.all(lrs <= LR * (1 + 1e-12))
    for t in range(T):
        if name == "rsqrt_continued" and t > 0:
            continue  # no re-warm: the task starts at its peak
        assert np.all(np.diff(lrs[t, : W + 1]) > 0), "warmup must rise"
        assert lrs[t, W] == pytest.approx(lrs[t].max(), rel=1e-12), "warmup end is the task's peak"
        assert lrs[t, 0] == pytest.approx(lrs[t, W] / (W + 1), rel=1e-12)


@pytest.mark.parametrize("name", DECAYING)
def test_every_task_ends_on_lr_min(name):
    np.testing.assert_allclose(curve(name)[:, -1], LR_MIN, rtol=1e-9)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("steps", [1, 2, 3, 7])
def test_tiny_tasks_stay_finite(name, steps):
    lrs = curve(name, steps=steps, tasks=4)
    assert np.all(np.isfinite(lrs)) and np.all(lrs > 0) and np.all(lrs <= LR * (1 + 1e-12))
    if steps == 1 and name in ("constant", "cosine", "rsqrt", "wsd"):
        assert np.all(lrs == LR), "a one-step task runs at its peak"


# ---------------------------------------------------------------------------------------------- per schedule


def test_constant_with_and_without_warmup():
    lrs = curve("constant")
    assert np.all(lrs[:, W:] == LR)
    np.testing.assert_allclose(lrs[0, :W], LR * np.arange(1, W + 1) / (W + 1))
    assert np.all(curve("constant", warmup_frac=0.0) == LR)


def test_cosine_per_task():
    lrs = curve("cosine")
    assert np.all(lrs == lrs[0]), "every task has the same schedule"
    task = lrs[0]
    assert task[W] == LR and task[-1] == pytest.approx(LR_MIN)
    mid = W + (S - 1 - W) // 2  # S − 1 − W = 1277 is odd: use the exact formula at this step
    assert task[mid] == pytest.approx(LR_MIN + cos_shape((mid - W) / (S - 1 - W)) * DELTA, rel=1e-12)
    assert np.all(np.diff(task[W:]) < 0), "monotonic within the cosine decay"
    half = curve("cosine", steps=101, tasks=1, warmup_frac=0.0)[0]
    assert half[50] == pytest.approx((LR + LR_MIN) / 2, rel=1e-12)


def autoregressive_peak(t: int, steps: int = S, warmup: int = W) -> float:
    """The fact sheet's formula, written out independently."""
    if t == 0:
        return LR
    q = (t * (steps - warmup) + 1) / ((t + 1) * (steps - warmup))
    return LR_MIN + 0.5 * (1 + math.cos(math.pi * q)) * DELTA


@pytest.mark.parametrize("steps, warmup_frac", [(S, 0.1), (50, 0.1), (10, 0.0), (2, 0.0)])
def test_autoregressive_peaks_follow_the_formula(steps, warmup_frac):
    warmup = int(warmup_frac * steps)
    lrs = curve("autoregressive_cosine", steps=steps, warmup_frac=warmup_frac)
    expected = [autoregressive_peak(t, steps, warmup) for t in range(T)]
    np.testing.assert_allclose(lrs[:, warmup], expected, rtol=1e-12)
    spec = ScheduleSpec("autoregressive_cosine", lr=LR, warmup_frac=warmup_frac)
    np.testing.assert_allclose(task_peaks(spec, steps, T), expected, rtol=1e-12)
    assert np.all(np.diff(lrs[:, warmup]) < 0)


def test_autoregressive_plus_one_lowers_the_peaks_of_short_tasks():
    # The "+1" in the formula is one step of a (t+1)(S−W)-step cosine: negligible at S = 1420, but
    # with S − W = 10 the second task peaks at 0.42 lr instead of 0.5 lr.
    peaks = curve("autoregressive_cosine", steps=10, tasks=3, warmup_frac=0.0)[:, 0] / LR
    assert peaks[1] == pytest.approx(1e-3 + 0.999 * cos_shape(11 / 20), rel=1e-12)
    assert peaks[1] == pytest.approx(0.422, abs=1e-3)


def test_autoregressive_peaks_match_the_papers_halving():
    peaks = curve("autoregressive_cosine")[:, W] / LR
    np.testing.assert_allclose(peaks[:4], [1.0, 0.5, 0.25, 0.15], atol=0.005)
    # What the formula yields beyond the paper's "…": sin²(π / (2(t+1))) ~ 1/t², 0.7 % of lr by t = 19.
    np.testing.assert_allclose(peaks[4:], [math.sin(math.pi / (2 * (t + 1))) ** 2 for t in range(4, T)], atol=0.002)
    assert peaks[-1] == pytest.approx(0.0071, abs=1e-4)


def test_autoregressive_cosines_from_the_peak_to_lr_min_within_each_task():
    lrs = curve("autoregressive_cosine")
    for t in (1, 7, 19):
        p = autoregressive_peak(t)
        s = W + 500
        assert lrs[t, s] == pytest.approx(LR_MIN + cos_shape(500 / (S - 1 - W)) * (p - LR_MIN), rel=1e-12)
        assert np.all(np.diff(lrs[t, W:]) < 0)


def test_dynamic_task_zero_is_cosine():
    np.testing.assert_array_equal(curve("dynamic")[0], curve("cosine")[0])


def test_dynamic_follows_the_tail_of_one_cosine_over_tasks_0_to_t():
    lrs = curve("dynamic")
    span = S - W
    for t in (1, 4, 19):
        long_cosine = curve("cosine", steps=(t + 1) * span, tasks=1, warmup_frac=0.0)[0]
        np.testing.assert_allclose(lrs[t, W:], long_cosine[t * span :], rtol=1e-12)


def test_dynamic_without_warmup_is_one_cosine_of_length_t_plus_1_times_s():
    lrs = curve("dynamic", steps=100, tasks=5, warmup_frac=0.0)
    for t in range(5):
        long_cosine = curve("cosine", steps=(t + 1) * 100, tasks=1, warmup_frac=0.0)[0]
        np.testing.assert_allclose(lrs[t], long_cosine[t * 100 :], rtol=1e-12)


def test_dynamic_is_continuous_and_peaks_like_autoregressive():
    lrs = curve("dynamic")
    for t in range(T):
        slope_bound = math.pi / 2 * DELTA / ((t + 1) * (S - W) - 1)  # max |d/dn| of the global cosine
        assert np.max(np.abs(np.diff(lrs[t, W:]))) <= slope_bound * (1 + 1e-9)
    np.testing.assert_allclose(lrs[:, W], curve("autoregressive_cosine")[:, W], rtol=5e-3)


def test_rsqrt_values():
    task = curve("rsqrt")[0]
    assert task[W] == LR
    assert task[4 * W] == pytest.approx(LR_MIN + 0.5 * DELTA, rel=1e-12)  # √(W / 4W) = ½
    last_main = S - C - 1
    assert task[last_main] == pytest.approx(LR_MIN + math.sqrt(W / last_main) * DELTA, rel=1e-12)
    assert np.all(np.diff(task[W : S - C]) < 0)
    # linear cooldown: C equal steps from the rsqrt value at S − C down to lr_min
    start = LR_MIN + math.sqrt(W / (S - C)) * DELTA
    np.testing.assert_allclose(task[S - C :], start + (LR_MIN - start) * np.arange(1, C + 1) / C, rtol=1e-12)
    assert np.all(curve("rsqrt") == task), "restarted identically every task"


def test_rsqrt_autoregressive_peaks():
    lrs = curve("rsqrt_autoregressive")
    for t in range(T):
        p = LR_MIN + math.sqrt((t + 1) * W / (t * S + W)) * DELTA
        assert lrs[t, W] == pytest.approx(p, rel=1e-12)
        assert lrs[t, 4 * W] == pytest.approx(LR_MIN + 0.5 * (p - LR_MIN), rel=1e-12)
    assert lrs[0, W] == LR
    assert lrs[-1, W] / LR == pytest.approx(math.sqrt(20 * W / (19 * S + W)), abs=1e-3)


def test_rsqrt_continued_is_one_decay_through_every_main_phase():
    lrs = curve("rsqrt_continued")
    np.testing.assert_array_equal(lrs[0], curve("rsqrt")[0])
    main = np.concatenate([lrs[t, : S - C] for t in range(T)])  # drop each cooldown branch
    n = np.arange(W, T * (S - C))
    np.testing.assert_allclose(main[W:], LR_MIN + np.sqrt(W / n) * DELTA, rtol=1e-12)
    for t in range(1, T):
        assert lrs[t, 0] == pytest.approx(LR_MIN + math.sqrt(W / (t * (S - C))) * DELTA, rel=1e-12)
        assert lrs[t, 0] < lrs[t - 1, S - C - 1], "no re-warm: continues below where it left off"


def test_rsqrt_recovered_rewarms_onto_the_uninterrupted_curve():
    lrs = curve("rsqrt_recovered")
    np.testing.assert_array_equal(lrs[0], curve("rsqrt")[0])
    for t in (1, 5, 19):
        n = t * S + np.arange(W, S - C)
        np.testing.assert_allclose(lrs[t, W : S - C], LR_MIN + np.sqrt(W / n) * DELTA, rtol=1e-12)
        np.testing.assert_allclose(lrs[t, :W], lrs[t, W] * np.arange(1, W + 1) / (W + 1), rtol=1e-12)
        ar_peak = curve("rsqrt_autoregressive")[t, W]
        assert (ar_peak - LR_MIN) / (lrs[t, W] - LR_MIN) == pytest.approx(math.sqrt(t + 1), rel=1e-12)


@pytest.mark.parametrize(
    "shape, halfway", [("linear", 0.5), ("cosine", 0.5), ("sqrt", 1 - math.sqrt(0.5))]
)
def test_wsd_warmup_stable_decay(shape, halfway):
    steps, d = 1000, 200
    task = curve("wsd", steps=steps, tasks=2, decay_frac=0.2, anneal_shape=shape)[1]
    assert np.all(task[100 : steps - d] == LR), "stable at lr between warmup and decay"
    assert task[steps - d + 99] == pytest.approx(LR_MIN + halfway * DELTA, rel=1e-12)  # progress q = 100/200
    assert task[-1] == pytest.approx(LR_MIN) and np.all(np.diff(task[steps - d - 1 :]) < 0)


# ---------------------------------------------------------------------------------------------- config, plot


def test_schedule_from_config_defaults_to_the_reference_cosine():
    spec = schedule_from_config(TrainConfig())
    assert spec == ScheduleSpec("cosine", lr=1e-5, lr_min_ratio=0.001, warmup_frac=0.1)
    spec = schedule_from_config(TrainConfig(schedule="dynamic", lr=3e-4, warmup_frac=0.0))
    assert (spec.name, spec.lr, spec.warmup_frac) == ("dynamic", 3e-4, 0.0)


def test_config_rejects_an_unknown_schedule_with_the_valid_names():
    with pytest.raises(ConfigError, match="train.schedule: unknown schedule 'wsd2'.*Valid schedules"):
        load_config(None, ["train.schedule=wsd2"])
    assert load_config(None, ["train.schedule=rsqrt_recovered"]).train.schedule == "rsqrt_recovered"


@pytest.mark.parametrize("layout", ["overlay", "grid"])
def test_plot_file_is_written(tmp_path, layout):
    specs = [ScheduleSpec(n) for n in ALL] if layout == "grid" else [ScheduleSpec("cosine"), ScheduleSpec("wsd")]
    out = plot_schedules(specs, 50, 4, tmp_path / "sub" / "lr.png", layout=layout, log_y=True)
    assert out == tmp_path / "sub" / "lr.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["lr.png"], "no temp file left behind"


def test_plot_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        plot_schedules([], 10, 2, tmp_path / "x.png")
    with pytest.raises(ValueError, match="layout"):
        plot_schedules([ScheduleSpec()], 10, 2, tmp_path / "x.png", layout="stacked")
