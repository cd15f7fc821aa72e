"""Sinks mirror the event log: TensorBoard scalars read back from disk, W&B offline (skipped without wandb)."""

from pathlib import Path

import pytest

from fif.results.events import read_events
from fif.results.sinks import EventScalars, FanOut, build_sinks, replay

FIXTURE = Path(__file__).parents[1] / "fixtures" / "run_small"


def events():
    return list(read_events(FIXTURE / "events.jsonl"))


def test_event_scalars_place_everything_on_the_global_step():
    conv = EventScalars()
    got = [g for g in map(conv, events()) if g is not None]
    by_tag: dict[str, list] = {}
    for step, values in got:
        for tag, v in values.items():
            by_tag.setdefault(tag, []).append((step, v))
    assert by_tag["eval/A_KA"] == [(0, 20.0), (10, 30.0), (20, 46.0), (30, pytest.approx(160 / 3))]
    assert by_tag["eval/tasks_done"] == [(0, 0.0), (10, 1.0), (20, 2.0), (30, 3.0)]
    assert by_tag["eval_step/A_KA"] == [(15, pytest.approx(94 / 3))]  # task 1, step 5
    assert by_tag["train/loss"][:3] == [(5, 2.75), (10, 2.5), (15, 2.35)]
    assert by_tag["eval/E2"][-1] == (30, 64.0)
    assert by_tag["budget/spent_mafs"][-1] == (30, 9.0e9)


def test_tensorboard_sink_round_trip(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (sink,) = build_sinks(tmp_path, tensorboard=True, config_text="run:\n  seed: 0")
    replay(events(), sink)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "eval/A_KA", "eval/A_ZS", "eval/GM", "eval/A", "eval_step/A_KA", "budget/spent_mafs"} <= set(tags)
    a_zs = [(s.step, s.value) for s in acc.Scalars("eval/A_ZS")]
    assert a_zs == [(0, 60.0), (10, 58.0), (20, 56.0), (30, 54.5)]


def test_fan_out_drops_a_failing_sink_and_keeps_going():
    seen, closed = [], []

    class Broken:
        def __call__(self, event):
            raise RuntimeError("disk full")

        def close(self):
            closed.append("broken")

    class Good:
        def __call__(self, event):
            seen.append(event["event"])

        def close(self):
            closed.append("good")

    printed = []
    fan = FanOut(lambda e: printed.append(e["event"]), [Broken(), Good()])
    for e in events()[:3]:
        fan(e)
    fan.close()
    assert printed == seen == ["run_start", "eval", "task_start"]
    assert closed == ["good"]


def test_wandb_offline_without_account(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    (sink,) = build_sinks(tmp_path, wandb=True, wandb_project="fif-test", config={"seed": 0})
    replay(events(), sink)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    assert wandb.run is None  # finished


def test_missing_package_message(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="log.wandb=false"):
        build_sinks(tmp_path, wandb=True)


def test_tensorboard_resume_continues_the_step_axis_and_purges_the_lost_tail(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    evs = events()
    cut = next(i for i, e in enumerate(evs) if e["event"] == "task_start" and e["task"] == 1)
    (sink,) = build_sinks(tmp_path, tensorboard=True)
    replay(evs[: cut + 3], sink)  # the crashed process logged a little of task 1 (steps 15, 20) ...
    (sink,) = build_sinks(tmp_path, tensorboard=True, history=evs[:cut])  # ... the resume restarts task 1
    replay(evs[cut:], sink)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [s.step for s in acc.Scalars("train/loss")] == [5, 10, 15, 20, 25, 30]
    assert [s.step for s in acc.Scalars("eval/A_KA")] == [0, 10, 20, 30]
