"""fif.studies.stats against values worked out by hand (t quantiles from a printed t table)."""

from __future__ import annotations

import math

import pytest

from fif.studies.stats import (
    midstream_minus_final_spread,
    paired_contrast,
    pareto_front,
    spread,
    t_interval,
    t_quantile,
    verdict,
)

T_975 = {1: 12.706, 2: 4.303, 4: 2.776}  # two-sided 95% t quantiles, from a t table


@pytest.mark.parametrize("dof", sorted(T_975))
def test_t_quantile_matches_the_table(dof):
    assert t_quantile(0.95, dof) == pytest.approx(T_975[dof], abs=5e-4)


def test_t_interval_by_hand():
    # 30, 32, 34: mean 32, s = 2, half width = 4.303 * 2 / sqrt(3) = 4.9687
    iv = t_interval([30.0, 32.0, 34.0])
    assert iv.mean == pytest.approx(32.0) and iv.sd == pytest.approx(2.0) and iv.n == 3
    assert iv.low == pytest.approx(32 - 4.9687, abs=1e-3) and iv.high == pytest.approx(32 + 4.9687, abs=1e-3)
    assert iv.contains(27.1) and not iv.contains(26.9)
    # five values 1..5: mean 3, s = sqrt(2.5), half = 2.776 * 1.5811 / sqrt(5) = 1.9630
    iv5 = t_interval([1, 2, 3, 4, 5])
    assert iv5.half_width == pytest.approx(1.9630, abs=1e-3)
    one = t_interval([7.0])
    assert one.mean == 7.0 and one.low is None and one.high is None and one.contains(7.0) is None
    with pytest.raises(ValueError, match="at least one"):
        t_interval([])
    with pytest.raises(ValueError, match="not finite"):
        t_interval([1.0, math.nan])


def test_paired_contrast_pairs_by_seed_and_drops_unshared_seeds():
    values = {"a": {0: 35.0, 1: 38.0, 2: 41.0, 3: 99.0}, "b": {0: 30.0, 1: 32.0, 2: 34.0}}
    d = paired_contrast(values, {"a": 1, "b": -1})
    # per seed 5, 6, 7 (seed 3 has no b): mean 6, s = 1, half = 4.303 / sqrt(3) = 2.4843
    assert d.seeds == (0, 1, 2) and d.per_seed == (5.0, 6.0, 7.0)
    assert d.interval.mean == pytest.approx(6.0)
    assert (d.interval.low, d.interval.high) == pytest.approx((6 - 2.4843, 6 + 2.4843), abs=1e-3)
    assert d.missing == {"b": [3]}
    # pairs follow the seed, not the order or the rank of the values
    shuffled = paired_contrast({"a": {2: 38.0, 0: 41.0, 1: 35.0}, "b": {0: 30.0, 1: 34.0, 2: 32.0}}, {"a": 1, "b": -1})
    assert shuffled.seeds == (0, 1, 2) and shuffled.per_seed == (11.0, 1.0, 6.0)
    # Unpaired, the seed-to-seed spread would not cancel: s_a = 3, s_b = 2, standard error sqrt(9/3 + 4/3) = 2.08,
    # and even with t = 4.303 the half width 8.96 > 6 would put 0 inside the interval. Pairing makes it a finding.
    assert d.interval.low > 0 and 4.303 * math.sqrt(9 / 3 + 4 / 3) > 6
    # a difference of differences: (a2 - a1) - (b2 - b1) per seed = (4 - 1) - (2 - 1) = 2 and (5-1)-(2-1) = 3
    dd = paired_contrast({"a1": {0: 1, 1: 1}, "a2": {0: 4, 1: 5}, "b1": {0: 1, 1: 1}, "b2": {0: 2, 1: 2}},
                         {"a2": 1, "a1": -1, "b2": -1, "b1": 1})
    assert dd.per_seed == (2.0, 3.0) and dd.interval.mean == pytest.approx(2.5)
    assert dd.interval.half_width == pytest.approx(12.706 * math.sqrt(0.5) / math.sqrt(2), abs=1e-2)
    assert paired_contrast({"a": {0: 1.0}, "b": {1: 1.0}}, {"a": 1, "b": -1}) is None
    with pytest.raises(KeyError, match="'c'"):
        paired_contrast(values, {"a": 1, "c": -1})


def test_verdicts_never_call_an_interval_around_zero_a_finding():
    pos, around, neg = t_interval([5, 6, 7]), t_interval([-1, 3, 7]), t_interval([-5, -6, -7])
    assert (verdict(pos), verdict(around), verdict(neg)) == ("higher", "no difference", "lower")
    assert verdict(pos, "higher") == "reproduced"
    assert verdict(around, "higher") == "not reproduced: no difference"
    assert verdict(neg, "higher") == "not reproduced: opposite"
    assert verdict(neg, "lower") == "reproduced"
    assert verdict(around, "not_lower") == "reproduced (no difference, not worse)"
    assert verdict(pos, "not_lower") == "reproduced (higher)"
    assert verdict(neg, "not_lower") == "not reproduced: opposite"
    assert verdict(t_interval([3.0]), "higher") == "one seed: no interval"
    with pytest.raises(ValueError, match="valid: higher"):
        verdict(pos, "bigger")


def test_pareto_front_and_spread():
    pts = [(10, 90), (20, 85), (15, 80), (30, 70), (30, 60), (5, 95), (20, 85)]
    # (15, 80) is dominated by (20, 85); (30, 60) by (30, 70); the two (20, 85) are both kept
    assert pareto_front(pts) == [5, 0, 1, 6, 3]
    assert spread({"a": 3.0, "b": 7.5, "c": 5.0}) == 4.5
    with pytest.raises(ValueError):
        spread({})


def test_midstream_minus_final_spread_by_hand():
    # ranges per evaluation: 0 (zero-shot), 10, 6, 2 (end) -> mean mid-stream 8, minus 2 = 6
    trajs = {"random": [10, 30, 40, 50], "time": [10, 20, 34, 48], "frequency": [10, 25, 36, 49]}
    assert midstream_minus_final_spread(trajs) == pytest.approx(6.0)
    assert midstream_minus_final_spread({"a": [1, 2, 3], "b": [1, 2]}) is None  # different lengths
    assert midstream_minus_final_spread({"a": [1, 2, 3]}) is None  # one variant
