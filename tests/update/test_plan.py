"""The retention gate and the minor-vs-major recommendation, as pure functions of recorded metrics."""

from __future__ import annotations

import pytest

from fif.update.plan import peak_fraction, recommend, retention_gate

ROLES = {"g1": "eval_only", "g2": "eval_only", "new": "adaptation"}
SETTINGS = {"horizon": 4, "major_zs_drop": 3.0, "max_held": 2}


def metrics(g1: float, g2: float, new: float = 10.0) -> dict:
    return {"scores": {"g1": g1, "g2": g2, "new": new}, "roles": ROLES}


def test_gate_passes_within_the_threshold_and_reports_regressions():
    gate = retention_gate(metrics(50, 60), metrics(49, 60.5), max_zs_drop=1.0, against="v1.2")
    assert gate["passed"] and gate["zs_drop"] == pytest.approx(0.25)
    assert gate["regressions"] == [{"dataset": "g1", "before": 50, "after": 49, "delta": -1.0}]
    held = retention_gate(metrics(50, 60), metrics(40, 59), max_zs_drop=1.0, against="v1.2")
    assert not held["passed"] and held["zs_drop"] == pytest.approx(5.5)
    assert [r["dataset"] for r in held["regressions"]] == ["g1", "g2"]  # worst first
    assert "-5.50 points vs v1.2" in held["summary"]
    # adaptation data never counts toward retention
    assert retention_gate(metrics(50, 60, 90), metrics(50, 60, 0), 0.0, "v1.0")["passed"]


def test_per_set_threshold_holds_a_candidate_that_one_guard_set_drops_too_far():
    # pass: the mean drops 0.5, the worst set 1.5, both within their thresholds
    ok = retention_gate(metrics(50, 60), metrics(48.5, 60.5), 1.0, "v1.2", max_dataset_drop=2.0)
    assert ok["passed"] and ok["dataset_failures"] == [] and ok["max_dataset_drop"] == 2.0
    # fail on the mean only: both sets drop 1.5 (each within 2), the mean drops 1.5 (> 1)
    mean = retention_gate(metrics(50, 60), metrics(48.5, 58.5), 1.0, "v1.2", max_dataset_drop=2.0)
    assert not mean["passed"] and mean["dataset_failures"] == []
    # fail on one set only: g1 drops 6, g2 gains 5.5, so the mean drops 0.25 (within 1) but g1 is past 5
    one = retention_gate(metrics(50, 60), metrics(44, 65.5), 1.0, "v1.2", max_dataset_drop=5.0)
    assert not one["passed"] and one["zs_drop"] == pytest.approx(0.25)
    assert one["dataset_failures"] == [{"dataset": "g1", "before": 50, "after": 44, "delta": -6.0}]
    assert "1 guard set(s) dropped more than the 5 points allowed per set: g1 -6.00" in one["summary"]
    # off (None, the default), the same candidate passes; a drop exactly at the threshold passes
    assert retention_gate(metrics(50, 60), metrics(44, 65.5), 1.0, "v1.2")["passed"]
    assert retention_gate(metrics(50, 60), metrics(44, 66), 1.0, "v1.2", max_dataset_drop=6.0)["passed"]


def test_gate_needs_a_common_guard_set():
    with pytest.raises(ValueError, match="no guard set"):
        retention_gate({"scores": {}, "roles": {}}, metrics(1, 2), 1.0, "v1.0")


def version(name: str, status: str, a_zs: float, a_ka: float = 20.0) -> dict:
    return {"version": name, "status": status, "metrics": {"a_zs": a_zs, "a_ka": a_ka}, "budget": {"spent_mafs": 1.0}}


def test_minor_while_retention_holds_and_the_horizon_is_ahead():
    rec = recommend([version("v1.1", "released", 59.5)], {"metrics": {"a_zs": 60.0}}, SETTINGS, "autoregressive_cosine")
    assert rec["recommendation"] == "minor" and rec["facts"]["updates"] == 1


def test_major_when_retention_falls_candidates_are_held_or_the_horizon_is_spent():
    base = {"metrics": {"a_zs": 60.0}}
    eroded = recommend([version("v1.1", "released", 56.0)], base, SETTINGS, "cosine")
    assert eroded["recommendation"] == "major" and "4.00 points of retention lost" in eroded["reasons"][0]
    held = recommend([version("v1.1", "released", 60)], base, SETTINGS, "cosine",
                     since=[version("v1.2", "held", 50), version("v1.3", "held", 50)])
    assert held["recommendation"] == "major" and "last 2 candidates failed" in held["reasons"][0]
    spent = recommend([version(f"v1.{i}", "released", 60) for i in range(1, 5)], base, SETTINGS, "autoregressive_cosine")
    assert spent["recommendation"] == "major" and "9.5% of the first's" in spent["reasons"][0]


def test_peak_fraction_follows_the_autoregressive_cosine():
    assert [round(peak_fraction(t), 3) for t in range(4)] == [1.0, 0.5, 0.25, 0.146]


def test_the_deployed_version_is_judged_not_a_newer_one():
    """After a rollback, the versions past the deployed one do not count as its retention."""
    base = {"metrics": {"a_zs": 60.0}}
    rec = recommend([version("v1.1", "released", 59.0)], base, SETTINGS, "cosine",
                    since=[version("v1.2", "released", 50.0)])
    assert rec["recommendation"] == "minor" and rec["facts"]["a_zs_deployed"] == 59.0
