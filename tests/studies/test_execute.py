"""fif.studies.execute end to end on a tiny study (random-init mini model, a few steps): runs, validation
scores, the report, and a second pass that skips everything."""

from __future__ import annotations

import pytest

from fif.studies import expand_study, parse_study, report_study, run_study, write_study

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [
    "model.pretrained=null", "budget.ft_steps=4", "stream.tasks=2", "stream.datasets=[mini_digits,mini_letters]",
    "train.batch_size=16", "train.log_every=2", "eval.min_samples=20", "eval.batch_size=128", "run.device=cpu",
    "eval.datasets=[mini_digits,mini_colors]", "eval.full_at_ends=false",
    "data.options={pool_size: 200, train_per_class: 8, test_per_class: 4, eval_size: 40, retrieval_train: 20, "
    "retrieval_test: 20}",
]
STUDY = {"name": "tiny", "seeds": [0], "tune": {"train.lr": ["x1", "x2"]},
         "variants": [{"name": "ft", "overrides": ["merge.preset=none"]}]}


def test_a_study_runs_validates_reports_and_skips_what_is_done(tmp_path):
    plan, sweep = expand_study(parse_study(STUDY), "mini", TINY)
    out = write_study(plan, sweep, tmp_path / "s")
    seen = []
    outcomes = run_study(out, on_done=seen.append)
    assert [o.action for o in outcomes] == ["ran"] * 2
    assert [p.done for p in seen] == [1, 2] and seen[-1].seconds_left == 0
    assert seen[0].seconds_left is not None  # measured on the first finished run
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "validation").glob("*.json")}
    assert len(stamps) == 2
    analysis, written = report_study(out)
    assert analysis.finished == 2 and written.html.is_file() and analysis.comparisons == []
    ft = analysis.variant("ft")
    assert ft.how == "best validation GM" and len(ft.path) == 3  # zero-shot + 2 tasks
    assert next(p for p in analysis.points if p.chosen).validation.mean == max(p.validation.mean for p in analysis.points)
    again = run_study(out, only=[plan.runs[0].name])
    assert [o.action for o in again] == ["skipped"]
    report_study(out)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "validation").glob("*.json")} == stamps
    with pytest.raises(KeyError, match="has no run 'nope'"):
        run_study(out, only=["nope"])


def test_a_diverged_run_is_recorded_skipped_later_and_reported(tmp_path, monkeypatch):
    from fif.runner.folder import TrainingDivergedError
    from fif.runner.sweep import RunOutcome
    from fif.studies import execute

    plan, sweep = expand_study(parse_study(STUDY), "mini", TINY)
    out = write_study(plan, sweep, tmp_path / "s")
    bad, good = plan.runs[1].name, plan.runs[0].name
    calls = []

    def fake_run_sweep(out_dir, only, **kw):  # the largest lr diverges; the other "runs" without writing a folder
        calls.append(only[0])
        if only[0] == bad:
            raise TrainingDivergedError("non-finite steps after 3 rollbacks; lower train.lr")
        return [RunOutcome(only[0], "ran", out_dir / only[0])]

    monkeypatch.setattr(execute, "run_sweep", fake_run_sweep)
    assert [o.action for o in run_study(out)] == ["ran", "diverged"]
    assert execute.failed_runs(out) == {bad: "non-finite steps after 3 rollbacks; lower train.lr"}
    seen = []
    assert [o.action for o in run_study(out, on_start=lambda n, a: seen.append((n, a)))] == ["ran", "failed"]
    assert (bad, "failed") in seen and calls == [good, bad, good]
    run_study(out, retry_failed=True)
    assert calls[-1] == bad
    analysis, written = report_study(out)
    assert analysis.failed == {bad: "non-finite steps after 3 rollbacks; lower train.lr"}
    assert analysis.missing == [good] and f"diverged (left out): {bad}" in written.html.read_text()
