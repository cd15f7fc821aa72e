"""End-to-end runs of the spine on a small mini benchmark with a random-init tiny CLIP."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import fif
from fif.runner.setup import RunFolderError
from small_run import SMALL_RUN

SMALL = list(SMALL_RUN)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "a"
    events = []
    result = fif.run(fif.load_config("mini", SMALL), out_dir=out, on_event=events.append)
    return out, result, events


def test_run_folder_schema(finished_run):
    out, result, events = finished_run
    for name in ("config.yaml", "run.json", "events.jsonl", "summary.json", "final.safetensors"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert [p["task"] for p in summary["trajectory"]] == [-1, 0, 1]
    for point in summary["trajectory"]:
        assert {"task", "a_ka", "a_zs", "gm", "scores"} <= set(point)
        assert set(point["scores"]) == {"mini_digits", "mini_letters", "mini_colors", "mini_captions"}
        assert all(0.0 <= v <= 100.0 for v in point["scores"].values())
    assert set(summary["final"]) == {"task", "a_ka", "a_zs", "gm"}
    assert set(summary["trajectory_mean"]) == {"a_ka", "a_zs", "gm"}
    assert summary["ledger"]["spent_mafs"] <= summary["ledger"]["budget_mafs"] * (1 + 1e-9)
    assert [e["event"] for e in events][:2] == ["run_start", "eval"]
    assert events[-1]["event"] == "run_end"
    weights = load_file(str(out / "final.safetensors"))
    assert set(weights) == set(result.clip.model.state_dict())
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["fif_version"] == fif.__version__ and run_json["seed"] == 0
    concepts = [c for task in run_json["tasks"] for c in task]
    expected = [f"{d}+++{c}" for d in ("mini_digits", "mini_letters") for c in mini_classes(d)]
    assert len(run_json["tasks"]) == 2 and sorted(concepts) == sorted(expected)


def mini_classes(name):
    from fif.data.registry import get_benchmark

    return get_benchmark("mini").spec(name).classnames


def test_steps_come_from_the_budget(finished_run):
    _, _, events = finished_run
    steps = [e["steps"] for e in events if e["event"] == "task_end"]
    assert steps == [4, 4]  # 8 full fine-tuning steps split over 2 tasks


def test_same_seed_same_summary_and_weights(finished_run, tmp_path):
    out, _, _ = finished_run
    fif.run(fif.load_config("mini", SMALL), out_dir=tmp_path / "b")
    assert (tmp_path / "b" / "summary.json").read_text() == (out / "summary.json").read_text()
    a, b = load_file(str(out / "final.safetensors")), load_file(str(tmp_path / "b" / "final.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_refuses_to_overwrite(finished_run):
    out, _, _ = finished_run
    with pytest.raises(RunFolderError, match="--overwrite"):
        fif.run(fif.load_config("mini", SMALL), out_dir=out)


def test_bad_dataset_leaves_no_folder(tmp_path):
    with pytest.raises(KeyError, match="mini_digits"):
        fif.run(fif.load_config("mini", SMALL + ["stream.datasets=[mini_digitz]"]), out_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()
