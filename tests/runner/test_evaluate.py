"""A small real run with in-task evaluations and the TensorBoard sink, then `fif report` over its folder."""

from __future__ import annotations

import json

import pytest

import fif
from fif.results.events import read_events
from fif.results.report import load_run, run_metrics, write_report
from small_run import SMALL_RUN

SMALL = [*SMALL_RUN, "eval.every_steps=2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    pytest.importorskip("tensorboard")
    out = tmp_path_factory.mktemp("run") / "a"
    fif.run(fif.load_config("mini", [*SMALL, "log.tensorboard=true"]), out_dir=out)
    return out


def test_in_task_evaluations_are_logged_apart(run_dir):
    events = list(read_events(run_dir / "events.jsonl"))
    step_evals = [(e["task"], e["step"]) for e in events if e["event"] == "eval_step"]
    assert step_evals == [(0, 2), (1, 2)]  # 4 steps per task: step 2, not the last step (the task's own eval)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [p["task"] for p in summary["trajectory"]] == [-1, 0, 1]  # eval_step never becomes a task point
    e = next(e for e in events if e["event"] == "eval_step")
    assert set(e["scores"]) == {"mini_digits", "mini_letters", "mini_colors", "mini_captions"} and e["seconds"] > 0
    ends = [e for e in events if e["event"] == "task_end"]
    assert all(t["train_seconds"] >= 0 for t in ends)


def test_tensorboard_files_and_report(run_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    assert [s.step for s in acc.Scalars("eval/A_KA")] == [0, 4, 8]
    assert [s.step for s in acc.Scalars("eval_step/A_KA")] == [2, 6]
    run = load_run(run_dir)
    m = run_metrics(run)
    assert m["status"] == "finished" and m["evaluations"] == 3
    assert set(m["forgetting"]) == {"mini_digits", "mini_letters"}
    rep = write_report([run_dir], tmp_path / "report")
    assert (tmp_path / "report" / "steps-0.png").is_file() and rep.html.stat().st_size > 10_000
