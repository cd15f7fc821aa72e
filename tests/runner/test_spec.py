"""fif.runner.spec: the run's event channel."""

from __future__ import annotations

import json

from fif.results.events import EventLog
from fif.runner.spec import RunEvents


class Sink:
    def __init__(self):
        self.seen, self.closed = [], False

    def __call__(self, event):
        self.seen.append(event)

    def close(self):
        self.closed = True


def test_events_are_timed_logged_then_heard_then_sunk(tmp_path):
    heard, sink = [], Sink()
    path = tmp_path / "events.jsonl"
    events = RunEvents(path, EventLog(path), heard.append)
    events.emit({"task": 0, "event": "eval"})
    events.add_sinks([sink])
    events.emit({"event": "run_end"})
    events.close()
    logged = [json.loads(line) for line in path.read_text().splitlines()]
    assert [list(e)[:3] for e in logged] == [["event", "time", "task"], ["event", "time"]]  # name and time first
    assert heard == logged and sink.seen == logged[1:] and sink.closed


def test_a_silent_channel_writes_and_tells_nothing(tmp_path):
    path = tmp_path / "events.jsonl"
    events = RunEvents(path, None)
    events.emit({"event": "eval"})
    events.add_sinks([])
    events.close()
    assert not path.exists() and events.path == path
