"""fif.studies.estimate: the guess before any run has finished, then seconds measured on finished runs."""

from __future__ import annotations

import json

import pytest

from fif.studies.estimate import estimate
from fif.studies.plan import expand_study, write_study
from fif.studies.spec import parse_study
from study_fakes import SMALL


def test_estimate_guesses_then_measures(tmp_path):
    plan, sweep = expand_study(parse_study(SMALL), "mini")
    out = write_study(plan, sweep, tmp_path / "s")
    e = estimate(plan, out)
    # 4 ft runs of 240 steps and 4 ewc runs of 120, at 0.055 s/step (batch 128) + 12 s setup each
    assert (e.runs, e.runs_left, e.steps_left) == (8, 8, 4 * 240 + 4 * 120)
    assert e.seconds_left == pytest.approx(1440 * 0.055 + 8 * 12.0) and "guess" in e.source
    assert estimate(plan, out, "cuda").seconds_left is None
    run = out / plan.runs[0].name  # a finished run that took 48 s from its config to run_end
    run.mkdir()
    (run / "config.yaml").write_text((out / "configs" / f"{plan.runs[0].name}.yaml").read_text())
    began = (run / "config.yaml").stat().st_mtime
    (run / "events.jsonl").write_text(json.dumps({"event": "run_start"}) + "\n" +
                                      json.dumps({"event": "run_end", "time": began + 48.0}) + "\n")
    (run / "summary.json").write_text("{}")
    e = estimate(plan, out)
    assert e.runs_left == 7 and e.seconds_per_step == pytest.approx(0.2) and "measured" in e.source
    assert e.seconds_left == pytest.approx((3 * 240 + 4 * 120) * 0.2)
    assert estimate(plan, out, only=[plan.runs[1].name]).seconds_left == pytest.approx(240 * 0.2)
