"""`fif update apply` end to end on a tiny world: three updates equal a 3-task `fif run` byte for byte, a
candidate that fails the retention gate is held, damaged buffer data or state stops an apply before
anything is released, a killed apply resumes to the same bytes, and the lineage has one writer at a time."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fif
from fif import update
from fif.config import load_config
from fif.update.lineage import Lineage
from fif.update.updating import APPLY_DIR, RUN_DIR
from lineage_world import RECIPE, base_model, materialize_world

pytestmark = pytest.mark.usefixtures("one_thread")
ENV = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    materialize_world(root / "mat")
    update.init(root / "acme", recipe="mini", pretrained=str(base_model(root / "cache")), overrides=RECIPE)
    for name in ("mini_digits", "mini_letters", "mini_fills"):
        result = update.apply(root / "acme", str(root / "mat" / name))
        assert result.released
    return root


def fresh_copy(world: Path, tmp_path: Path, upto: str) -> Path:
    """A copy of the world's lineage as it was when ``upto`` was deployed (later versions removed)."""
    lin = tmp_path / "acme"
    shutil.copytree(world / "acme", lin)
    keep = int(upto.split(".")[1])
    for v in (lin / "versions").iterdir():
        if int(v.name.split(".")[1]) > keep:
            shutil.rmtree(v)
    info = json.loads((lin / "lineage.json").read_text())
    info["deployed"] = upto
    (lin / "lineage.json").write_text(json.dumps(info))
    return lin


def test_three_updates_deploy_what_a_three_task_run_deploys(world, tmp_path):
    lin = Lineage.open(world / "acme")
    assert [v["version"] for v in lin.versions] == ["v1.0", "v1.1", "v1.2", "v1.3"] and lin.deployed == "v1.3"
    assert lin.chain("v1.3") == ["v1.1", "v1.2", "v1.3"]
    cfg = load_config(str(world / "acme/versions/v1.3/config.yaml"))  # the lineage as one run
    assert cfg.stream.datasets == ["mini_digits", "mini_letters", "mini_fills"] and cfg.budget.ft_steps == 18
    run = fif.run(cfg, out_dir=tmp_path / "run3")
    assert (world / "acme/versions/v1.3/model.safetensors").read_bytes() == (run.out_dir / "final.safetensors").read_bytes()
    assert (world / "acme/versions/v1.3/model.safetensors").read_bytes() != \
        (world / "acme/versions/v1.0/model.safetensors").read_bytes()
    v13 = lin.version("v1.3")
    assert v13["metrics"]["a_ka"] == pytest.approx(run.summary["final"]["a_ka"])
    assert v13["budget"]["steps"] == 6 and set(v13["metrics"]["scores"]) == {
        "mini_colors", "mini_shapes", "mini_digits", "mini_letters", "mini_fills"}
    assert lin.version("v1.0")["metrics"]["scores"].keys() >= {"mini_colors", "mini_shapes"}  # measured by update 1
    assert not (world / "acme" / APPLY_DIR).exists()


def test_a_candidate_the_gate_holds_is_kept_and_the_deployed_version_stays(world, tmp_path):
    # Since mini world v3 the tiny base is at chance on the guard sets, so no learning rate can be shown to
    # destroy retention here: the gate is set to demand +100 points, which every candidate fails. The real
    # mini world's measurement is in docs/update.md.
    lin = fresh_copy(world, tmp_path, "v1.3")
    info = json.loads((lin / "lineage.json").read_text())
    info["settings"]["max_zs_drop"] = -100.0
    (lin / "lineage.json").write_text(json.dumps(info))
    before = (lin / "versions/v1.3/model.safetensors").read_bytes()
    result = update.apply(lin, "mini:mini_novel_shapes", overrides=["train.lr=1.0"])
    assert not result.released and result.version == "v1.4"
    assert result.gate["zs_drop"] > -100.0 and "allows a drop of -100" in result.gate["summary"]
    now = Lineage.open(lin)
    assert now.deployed == "v1.3" and now.version("v1.4")["status"] == "held"
    assert (lin / "versions/v1.3/model.safetensors").read_bytes() == before
    with pytest.raises(update.LineageError, match="reason"):
        update.promote(lin, "v1.4", reason="")
    with pytest.raises(update.LineageError, match="never released"):
        update.rollback(lin, to="v1.4")
    assert update.plan(lin)["facts"]["held_in_a_row"] == 1
    update.promote(lin, "v1.4", reason="the shapes team accepts the drop")
    now = Lineage.open(lin)
    assert now.deployed == "v1.4" and now.version("v1.4")["promoted"]["reason"] == "the shapes team accepts the drop"
    assert update.rollback(lin) == "v1.3" and Lineage.open(lin).info["pointer_log"][-1]["action"] == "rollback"


def test_changed_or_missing_buffer_data_stops_the_apply(world, tmp_path):
    lin = fresh_copy(world, tmp_path, "v1.2")
    mat = tmp_path / "mat"
    shutil.copytree(world / "mat", mat)
    for v in ("v1.1", "v1.2"):  # the copy's data lives elsewhere: point the records at it
        p = lin / "versions" / v / "data.json"
        p.write_text(p.read_text().replace(str(world / "mat"), str(mat)))
    victim = min((mat / "mini_letters").rglob("*.png"))
    victim.write_bytes(victim.read_bytes() + b"x")
    with pytest.raises(update.LineageDataError, match=rf"version v1\.2: its data file {victim} has changed"):
        update.apply(lin, str(mat / "mini_fills"))
    victim.unlink()
    with pytest.raises(update.LineageDataError, match=rf"version v1\.2: its data file {victim} is missing"):
        update.apply(lin, str(mat / "mini_fills"))
    assert [v["version"] for v in Lineage.open(lin).versions] == ["v1.0", "v1.1", "v1.2"]
    assert not (lin / APPLY_DIR).exists() and Lineage.open(lin).deployed == "v1.2"


def test_damaged_state_names_the_version(world, tmp_path):
    lin = fresh_copy(world, tmp_path, "v1.2")
    weights = lin / "versions/v1.2/state/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(update.LineageDataError, match=r"version v1\.2: its saved state .* is damaged"):
        update.apply(lin, str(world / "mat" / "mini_fills"))
    assert not (lin / APPLY_DIR).exists() and len(Lineage.open(lin).versions) == 3


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fif", "update", *args]


def test_killed_apply_resumes_to_the_same_bytes(world, tmp_path):
    lin = fresh_copy(world, tmp_path, "v1.2")
    proc = subprocess.Popen(cli("apply", str(lin), "--data", str(world / "mat/mini_fills"), "--no-progress"), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpts = lin / APPLY_DIR / RUN_DIR / "checkpoints"
    deadline = time.monotonic() + 240
    while not any(ckpts.glob("task0002-step*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert any(ckpts.glob("task0002-step*")), "the apply never reached a mid-update checkpoint"
    assert not (lin / "versions/v1.3").exists() and Lineage.open(lin).deployed == "v1.2"
    busy = subprocess.run(cli("apply", str(lin), "--data", str(world / "mat/mini_digits")), env=ENV, capture_output=True,
                          text=True, timeout=240, check=False)
    assert busy.returncode == 2 and "was interrupted" in busy.stderr  # other data: refused, nothing lost
    done = subprocess.run(cli("apply", str(lin), "--data", str(world / "mat/mini_fills"), "--no-progress"), env=ENV,
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    assert (lin / "versions/v1.3/model.safetensors").read_bytes() == \
        (world / "acme/versions/v1.3/model.safetensors").read_bytes()
    assert Lineage.open(lin).deployed == "v1.3" and not (lin / APPLY_DIR).exists()
    resumes = Lineage.open(lin).version("v1.3")["provenance"]["resumes"]  # the seed, then the rerun mid-update
    assert [r["checkpoint"][:13] for r in resumes] == ["task0002-star", "task0002-step"]


def test_a_second_writer_is_refused_and_changes_nothing(world, tmp_path):
    lin = fresh_copy(world, tmp_path, "v1.2")
    with update.lineage.lock(lin):  # another process's apply, rollback or promote in progress
        with pytest.raises(update.LineageBusyError, match="in use by another fif process"):
            update.apply(lin, str(world / "mat/mini_fills"))
        with pytest.raises(update.LineageBusyError):
            update.rollback(lin)
    assert not (lin / APPLY_DIR).exists() and Lineage.open(lin).deployed == "v1.2"


@pytest.mark.slow
def test_two_concurrent_applies_one_is_refused(world, tmp_path):
    lin = fresh_copy(world, tmp_path, "v1.2")
    first = subprocess.Popen(cli("apply", str(lin), "--data", str(world / "mat/mini_fills"), "--no-progress"), env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (lin / APPLY_DIR).exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGSTOP)  # hold the first apply mid-way, its lock taken
    try:
        second = subprocess.run(cli("apply", str(lin), "--data", str(world / "mat/mini_fills")), env=ENV,
                                capture_output=True, text=True, timeout=240, check=False)
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=240)
    assert first.returncode == 0, err
    assert second.returncode == 2 and "in use by another fif process" in second.stderr
    assert (lin / "versions/v1.3/model.safetensors").read_bytes() == \
        (world / "acme/versions/v1.3/model.safetensors").read_bytes()
    assert [v["version"] for v in Lineage.open(lin).versions] == ["v1.0", "v1.1", "v1.2", "v1.3"]


def test_a_crash_between_release_and_cleanup_finishes_on_rerun(world, tmp_path, monkeypatch):
    lin = fresh_copy(world, tmp_path, "v1.2")
    import fif.update.updating as apply_module

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    real_pointer = apply_module.set_pointer
    monkeypatch.setattr(apply_module, "set_pointer", crash)  # the version folder is written, the pointer not
    with pytest.raises(KeyboardInterrupt):
        update.apply(lin, str(world / "mat/mini_fills"))
    assert (lin / "versions/v1.3").is_dir() and Lineage.open(lin).deployed == "v1.2" and (lin / APPLY_DIR).is_dir()
    monkeypatch.setattr(apply_module, "set_pointer", real_pointer)
    monkeypatch.setattr(apply_module.shutil, "rmtree", crash)  # now the pointer moves, the cleanup dies
    with pytest.raises(KeyboardInterrupt):
        update.apply(lin, str(world / "mat/mini_fills"))
    assert Lineage.open(lin).deployed == "v1.3" and (lin / APPLY_DIR).is_dir()
    monkeypatch.undo()
    again = update.apply(lin, str(world / "mat/mini_fills"))  # the same command: done, nothing trained twice
    assert again.version == "v1.3" and again.released and not (lin / APPLY_DIR).exists()
    assert [v["version"] for v in Lineage.open(lin).versions] == ["v1.0", "v1.1", "v1.2", "v1.3"]
    assert (lin / "versions/v1.3/model.safetensors").read_bytes() == \
        (world / "acme/versions/v1.3/model.safetensors").read_bytes()
