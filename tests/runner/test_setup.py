"""fif.runner.setup: a run's spec is frozen, its state is what changes, and ranks other than 0 build a run that
writes and tells nothing (rank 0 writes the run folder)."""

from __future__ import annotations

import dataclasses

import pytest

from fif.config import load_config
from fif.runner.merger import FollowerMerger, TemporalMerger
from fif.runner.setup import setup
from fif.runner.state import RunState
from fif.train.distributed import Solo
from small_run import SMALL_RUN

pytestmark = pytest.mark.usefixtures("one_thread")


class RankOne(Solo):
    """Rank 1 of a world, as far as setup asks (setup runs no collective)."""

    rank, is_main = 1, False


def test_the_spec_is_frozen_and_the_state_holds_the_budget(tmp_path):
    heard = []
    spec, state = setup(load_config("mini", list(SMALL_RUN)), tmp_path / "run", on_event=heard.append, progress=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.method = None  # type: ignore[misc]
    assert isinstance(spec.ranks, Solo) and spec.ranks.is_main and spec.progress
    assert isinstance(spec.merger, TemporalMerger)
    assert isinstance(state, RunState) and state.optimizer is None and state.guard.rollbacks == 0
    assert state.ledger.num_tasks == len(spec.tasks) == 2
    spec.emit({"event": "probe", "n": 1})
    assert [e["event"] for e in heard] == ["probe"]
    assert (tmp_path / "run" / "events.jsonl").read_text().count("probe") == 1


def test_ranks_other_than_0_build_a_silent_run(tmp_path):
    heard = []
    out = tmp_path / "run"
    spec, state = setup(load_config("mini", list(SMALL_RUN)), out, on_event=heard.append, progress=True, ranks=RankOne())
    assert isinstance(spec.merger, FollowerMerger) and not spec.progress
    spec.emit({"event": "probe"})
    assert heard == [] and not spec.events.path.exists()
    assert spec.events.path == out / "events.jsonl"  # still names rank 0's log, for reading
    assert not out.exists()  # no merge history, no event log: rank 0 writes the folder
    assert state.ledger.num_tasks == 2  # the same plan as rank 0 (share_plan makes the numbers rank 0's)
