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


# ----------------------------------------------------------------------------------------------
# The run folder: what --overwrite may remove, and new folders that never collide


def fif_run_folder(path, *extra: str, started: bool = True):
    """A folder as fif leaves it: run.json (the marker), config.yaml, and when ``started`` events and a checkpoint."""
    import json

    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"fif_version": "0.1.0", "seed": 0}))
    (path / "config.yaml").write_text("run:\n  seed: 0\n")
    if started:
        (path / "events.jsonl").write_text('{"event": "run_start"}\n')
        (path / "checkpoints" / "task0000-start").mkdir(parents=True)
        (path / "checkpoints" / "task0000-start" / "manifest.json").write_text("{}")
    for name in extra:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text("the user's")
    return path


def test_overwrite_empties_a_fif_run_folder(tmp_path):
    from fif.runner.setup import prepare_out_dir

    out = fif_run_folder(tmp_path / "run", "report/report.html", ".summary.json.abc123.tmp")
    prepare_out_dir(out, overwrite=True).release()
    assert [p.name for p in out.iterdir()] == [".lock"]


@pytest.mark.parametrize("case", ["not a run folder", "config.yaml is no marker", "a user's file inside",
                                  "a user's folder inside"])
def test_overwrite_never_deletes_what_fif_did_not_write(case, tmp_path):
    from fif.runner.setup import RunFolderError, prepare_out_dir

    out = tmp_path / "p"
    if case == "not a run folder":
        out.mkdir()
        (out / "notes.txt").write_text("keep")
    elif case == "config.yaml is no marker":  # the reproduction
        (out / "src").mkdir(parents=True)
        (out / "src" / "notes.txt").write_text("keep")
        (out / "config.yaml").write_text("lr: 1\n")
        (out / "events.jsonl").write_text("")
    else:
        fif_run_folder(out, "notes.txt" if case == "a user's file inside" else "src/notes.txt")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(RunFolderError) as e:
        prepare_out_dir(out, overwrite=True)
    assert str(out) in str(e.value) and "choose another --out" in str(e.value)
    if case.startswith("a user's"):
        assert "fif did not write" in str(e.value) and ("notes.txt" in str(e.value) or "src/" in str(e.value))
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before  # not even a .lock left behind


def test_a_folder_whose_setup_never_finished_is_used_again_without_overwrite(tmp_path):
    from fif.runner.setup import RunFolderError, prepare_out_dir

    out = fif_run_folder(tmp_path / "run", "history/zeroshot.safetensors", started=False)
    prepare_out_dir(out, overwrite=False).release()
    assert [p.name for p in out.iterdir()] == [".lock"]
    started = fif_run_folder(tmp_path / "started")
    with pytest.raises(RunFolderError, match="--overwrite to replace it, --resume"):
        prepare_out_dir(started, overwrite=False)


def test_default_run_folders_started_in_the_same_second_never_collide(tmp_path, monkeypatch):
    from datetime import datetime

    import fif.runner.setup as setup_module

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2024, 5, 1, 12, 0, 0)

    monkeypatch.setattr(setup_module, "datetime", Frozen)
    cfg = load_config("mini", ["merge.preset=none"])
    first, second, third = (setup_module.claim_default_out_dir(cfg, tmp_path) for _ in range(3))
    assert first.name == "20240501-120000-mini-finetune"
    assert [second.name, third.name] == [f"{first.name}-2", f"{first.name}-3"]
    assert all(p.is_dir() and not any(p.iterdir()) for p in (first, second, third))


class RankOfTwo(Solo):
    """Rank 0 of a world of 2, as far as setup asks."""

    world_size = 2


@pytest.mark.parametrize("extra, micro, layout", [
    ((), 8, "1 micro-batch"),
    (("train.grad_accum_steps=2", "train.grad_checkpointing=true"), 4, "2 micro-batches, checkpointed"),
])
def test_the_step_cost_has_this_layouts_device_peak_and_the_one_device_multiplier(tmp_path, extra, micro, layout):
    """The multiplier's peak is one device at the global batch whatever the layout; the per-device peak is
    taken at the per-rank micro-batch (a world of 2 halves it)."""
    cfg = load_config("mini", [*SMALL_RUN, "train.batch_size=8", *extra])
    _, alone = setup(cfg, tmp_path / "one")
    _, two = setup(cfg, tmp_path / "two", ranks=RankOfTwo())
    assert (alone.step_cost.device_batch_size, two.step_cost.device_batch_size) == (micro, micro // 2)
    assert (alone.step_cost.layout, two.step_cost.layout) == (f"1 rank, {layout}", f"2 ranks, {layout}")
    assert two.step_cost.peak_memory_bytes == alone.step_cost.peak_memory_bytes
    assert two.step_cost.device_peak_bytes < alone.step_cost.device_peak_bytes <= alone.step_cost.peak_memory_bytes
    assert two.ledger.tasks[0].budget_mafs == alone.ledger.tasks[0].budget_mafs


def test_budget_memory_is_validated():
    from fif.config import ConfigError

    with pytest.raises(ConfigError, match="budget.memory: 'measure'.*Valid: auto, estimate"):
        load_config("mini", [*SMALL_RUN, "budget.memory=measure"])


@pytest.mark.parametrize("extra, compiled", [((), False), (("train.compile=true",), True)])
def test_train_compile_compiles_the_towers_once_at_setup(tmp_path, extra, compiled):
    """Off by default on CPU; train.compile=true compiles the image tower and text transformer of the run's
    model (lazily: nothing runs at setup), which every task then reuses."""
    spec, _ = setup(load_config("mini", [*SMALL_RUN, *extra]), tmp_path / "run")
    for tower in (spec.clip.model.visual, spec.clip.model.transformer):
        assert (tower._compiled_call_impl is not None) == compiled


@pytest.mark.parametrize("arch", ["fif-mini-rn32-w2", "fif-mini-vit32"])
def test_mini_base_of_another_architecture_is_built_by_its_own_recipe(arch, tmp_path, monkeypatch):
    """model.pretrained=mini-base builds (or finds) the base of model.arch with that architecture's recipe."""
    import torch

    from fif.runner import setup as S
    from fif.train.pretrain import ensure_base_model, recipe_for

    seen = []

    def tiny(cache_dir, spec, options, device, on_log=None):  # the recipe it asked for, built in 2 steps
        seen.append(spec)
        return ensure_base_model(cache_dir, dataclasses.replace(spec, steps=2, batch_size=8), options, device)

    monkeypatch.setattr(S, "ensure_base_model", tiny)
    cfg = load_config("mini", [f"model.arch={arch}", f"run.cache_dir={tmp_path}", "data.options={pool_size: 32}"])
    clip = S.load_model(cfg, torch.device("cpu"))
    assert seen == [recipe_for(arch, "mini")] and clip.arch == arch
