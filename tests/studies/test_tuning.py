"""fif.studies.tuning: stored validation scores belong to the weights they scored; grid choice on ties."""

from __future__ import annotations

import time

from fif.studies.tuning import choose_points, read_validation
from study_fakes import fake_study


def test_a_redone_run_loses_its_stale_validation_score(tmp_path):
    out = fake_study(tmp_path / "study")
    name = "base_lr=0.0002_seed=0"
    assert read_validation(out, name)["gm"] == 40.0
    time.sleep(0.01)
    (out / name / "final.safetensors").write_bytes(b"other weights")  # the run was redone
    assert read_validation(out, name) is None
    (out / "validation" / f"{name}.json").write_text("{torn")
    assert read_validation(out, name) is None
    assert read_validation(out, "no_such_run") is None


def test_choose_points_takes_the_best_mean_and_the_first_on_ties():
    assert choose_points({"a": [1, 3], "b": [2.5], "c": []}, ["a", "b", "c"]) == "b"
    assert choose_points({"a": [2.0], "b": [2.0]}, ["b", "a"]) == "b"
    assert choose_points({"a": []}, ["a"]) is None
