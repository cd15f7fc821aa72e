"""fif.studies.analysis on a hand-made study (tests/study_fakes.py): the grid point chosen on validation,
not on test; means, t-intervals and paired differences against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from fif.studies.analysis import analyze, load_records
from fif.studies.plan import read_plan
from study_fakes import fake_study

T2 = 4.303  # t_{0.975, 2} from a t table: three seeds


def _analysis(tmp_path, **kw):
    out = fake_study(tmp_path / "study", **kw)
    plan = read_plan(out)
    records, missing = load_records(out, plan)
    return analyze(plan, records, missing)


def test_grid_point_is_chosen_on_validation_not_on_test(tmp_path):
    a = _analysis(tmp_path)
    base, new = a.variant("base"), a.variant("new")
    # base: lr=0.0004 has the better test GM (sqrt(41*70) = 53.6 > sqrt(32*80) = 50.6) but validation GM 30 < 40
    assert base.chosen.label == "lr=0.0002" and base.how == "best validation GM"
    assert new.chosen.label == "lr=0.0004"  # validation 36 > 35
    assert [p.label for p in a.points if p.chosen] == ["lr=0.0002", "lr=0.0004"]
    assert "never on the reported test scores" in a.tuning_statement


def test_without_validation_the_best_test_point_is_compared_and_flagged(tmp_path):
    a = _analysis(tmp_path, validation=False)
    assert a.plan.tuning == "test" and a.variant("base").chosen.label == "lr=0.0004"
    assert "optimistic" in a.variant("base").how and "chosen on the reported scores" in a.tuning_statement


def test_means_intervals_and_paired_differences_by_hand(tmp_path):
    a = _analysis(tmp_path)
    base = a.variant("base").chosen
    ka = base.metrics["final"]["a_ka"]  # 30, 32, 34
    assert (ka.mean, ka.low, ka.high) == pytest.approx((32, 32 - T2 * 2 / math.sqrt(3), 32 + T2 * 2 / math.sqrt(3)),
                                                        abs=2e-3)
    assert base.metrics["change"]["a_ka"].mean == pytest.approx(22)  # 32 - 10
    # trajectory mean of A_KA over (zero-shot, task 1, task 2): seeds 20, 21.333, 22.667 -> mean 21.333
    assert base.metrics["trajectory_mean"]["a_ka"].mean == pytest.approx(64 / 3)
    gm = base.metrics["final"]["gm"]
    assert gm.mean == pytest.approx((math.sqrt(30 * 80) + math.sqrt(32 * 80) + math.sqrt(34 * 80)) / 3)
    by_claim = {r.comparison.claim: r for r in a.comparisons}
    # new@0.0004 - base@0.0002, final A_KA per seed: 35-30, 38-32, 41-34 = 5, 6, 7 -> 6 +- 4.303/sqrt(3)
    r = by_claim["new accumulates more than base"]
    assert r.difference.per_seed == (5.0, 6.0, 7.0) and r.verdict == "reproduced"
    assert (r.difference.interval.low, r.difference.interval.high) == pytest.approx(
        (6 - T2 / math.sqrt(3), 6 + T2 / math.sqrt(3)), abs=2e-3)
    assert "+6.00 pp, 95% CI [+3.52, +8.48], paired over 3 seeds" in r.sentence
    # final A_ZS: 60 - 80 = -20 for every seed: an interval of width 0 below 0
    r = by_claim["new retains more than base"]
    assert r.verdict == "not reproduced: opposite" and r.difference.interval.mean == pytest.approx(-20)
    # trajectory-mean A_KA: new (10+15+35)/3=20, (10+17+38)/3=21.67, (10+19+41)/3=23.33; base 20, 21.33, 22.67
    # differences 0, 1/3, 2/3: mean 1/3, s = 1/3, half = 4.303/3/sqrt(3) = 0.828 -> contains 0
    r = by_claim["new keeps more A_KA along the stream"]
    assert r.difference.interval.mean == pytest.approx(1 / 3)
    assert r.verdict == "not reproduced: no difference" and "(the interval contains 0)" in r.sentence
    # spread: mid-stream |15-20|, |17-22|, |19-24| = 5 each; end |35-30|=5, |38-32|=6, |41-34|=7 -> 0, -1, -2
    r = by_claim["the variants differ more mid-stream than at the end"]
    assert r.difference.per_seed == pytest.approx((0.0, -1.0, -2.0)) and r.verdict == "not reproduced: no difference"


def test_pareto_front_of_each_variant(tmp_path):
    a = _analysis(tmp_path)
    front = {(p.variant, p.label): p.on_front for p in a.points}
    # base: (32, 80) vs (41, 70): neither dominates. new: (35, 81) vs (38, 60): neither dominates
    assert all(front.values())
    assert a.variant("new").path[-1]["a_ka"] == pytest.approx(38) and a.variant("new").path[-1]["a_ka_sd"] == pytest.approx(3)


def test_a_partial_study_reports_what_it_has(tmp_path):
    a = _analysis(tmp_path, skip=("new_lr=0.0004_seed=2", "new_lr=0.0002_seed=2"))
    assert a.finished == 10 and a.missing == ["new_lr=0.0002_seed=2", "new_lr=0.0004_seed=2"]
    r = next(r for r in a.comparisons if r.comparison.claim == "new accumulates more than base")
    assert r.difference.seeds == (0, 1) and r.difference.per_seed == (5.0, 6.0)


def test_a_point_that_diverged_on_a_seed_is_not_chosen(tmp_path):
    out = fake_study(tmp_path / "study", skip=("base_lr=0.0002_seed=2",))
    plan = read_plan(out)
    records, missing = load_records(out, plan)
    a = analyze(plan, records, missing, {"base_lr=0.0002_seed=2": "diverged"})
    # lr=0.0002 has the better validation GM on the seeds that finished, but diverged on seed 2
    assert a.variant("base").chosen.label == "lr=0.0004" and a.missing == []
    assert next(p for p in a.points if p.label == "lr=0.0002" and p.variant == "base").diverged == 1
