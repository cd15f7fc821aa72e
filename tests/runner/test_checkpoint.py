"""Checkpoint storage: state trees without pickles, atomic verified folders, fallback, pruning, RNG streams,
canonical safetensors bytes, safe loading of user files, the run folder lock and the stop signals."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fif.core.io import CheckpointError, load_tensor_file, safetensors_bytes
from fif.core.seeding import capture_rng, restore_rng
from fif.runner.checkpoint import (
    MANIFEST,
    MODEL_FILE,
    STATE_FILE,
    Position,
    decode_tree,
    encode_tree,
    latest_valid,
    list_checkpoints,
    load_checkpoint,
    prune,
    quarantine,
    remove_after,
    save_checkpoint,
)
from fif.runner.folder import RunFolderInUseError, RunInterrupted, RunLock, StopSignals


def weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g), "n": torch.tensor(7)}


def test_positions_sort_in_run_order_and_round_trip_their_names():
    order = [Position(0), Position(0, True, 3), Position(0, True, 12), Position(1), Position(1, True, 1), Position(2)]
    assert sorted(reversed(order)) == order
    for p in order:
        assert Position.from_name(p.name) == p
    assert Position.from_name("task0001-step0000003.corrupt") is None


def test_state_tree_round_trip_keeps_types_without_pickles():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.randn(3, 2))], lr=1e-3)
    opt.param_groups[0]["params"][0].grad = torch.ones(3, 2)
    opt.step()
    state = {
        "optimizer": opt.state_dict(),  # int keys, tuples (betas), tensors
        "numpy_rng": np.random.get_state(),  # tuple with a uint32 array
        "python_rng": random.getstate(),
        "losses": [(4, 2.5), (8, float("nan")), (12, math.inf)],
        "__dunder": {"__tensor__": "not a tensor ref"},  # reserved-looking keys survive
        "none": None,
    }
    tensors: dict[str, torch.Tensor] = {}
    text = json.dumps(encode_tree(state, tensors))
    back = decode_tree(json.loads(text), tensors)
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert set(back["optimizer"]["state"]) == {0}
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert back["numpy_rng"][1].dtype == np.uint32 and np.array_equal(back["numpy_rng"][1], state["numpy_rng"][1])
    assert back["python_rng"] == state["python_rng"]
    assert back["losses"][0] == (4, 2.5) and math.isnan(back["losses"][1][1]) and back["losses"][2][1] == math.inf
    assert back["__dunder"] == {"__tensor__": "not a tensor ref"}
    with pytest.raises(TypeError, match="state at /obj"):
        encode_tree({"obj": object()}, {})


def test_save_load_round_trip_and_tied_weights(tmp_path):
    shared = torch.randn(5, 2)
    w = {**weights(), "tied_a": shared, "tied_b": shared, "view": shared[1:3]}
    path = save_checkpoint(tmp_path, Position(1, True, 4), w, {"x": 1, "t": torch.arange(3)}, {"seed": 0})
    assert path.name == "task0001-step0000004"
    ckpt = load_checkpoint(path)
    assert ckpt.position == Position(1, True, 4)
    assert all(torch.equal(ckpt.weights[k], v) for k, v in w.items())
    assert ckpt.state["x"] == 1 and torch.equal(ckpt.state["t"], torch.arange(3))
    assert ckpt.manifest["metadata"] == {"seed": 0}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_canonical_safetensors_bytes_do_not_depend_on_metadata_order():
    a = safetensors_bytes(weights(), {"z": "1", "a": "2", "m": "3"})
    b = safetensors_bytes(weights(), {"m": "3", "a": "2", "z": "1"})
    assert a == b
    from safetensors.torch import load

    assert all(torch.equal(load(a)[k], v) for k, v in weights().items())


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_manifest", "bad_manifest", "missing_file"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one_with_a_warning(tmp_path, damage):
    save_checkpoint(tmp_path, Position(0), weights(0), {"at": "start"})
    latest = save_checkpoint(tmp_path, Position(0, True, 5), weights(1), {"at": "step5"})
    target = latest / MODEL_FILE
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-7])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[-3] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "no_manifest":
        (latest / MANIFEST).unlink()
    elif damage == "bad_manifest":
        (latest / MANIFEST).write_text("{not json")
    else:
        (latest / STATE_FILE).unlink()
    warnings: list[str] = []
    ckpt, skipped = latest_valid(tmp_path, warn=warnings.append)
    assert ckpt is not None and ckpt.state == {"at": "start"} and ckpt.position == Position(0)
    assert [p.name for p, _ in skipped] == [latest.name]
    assert len(warnings) == 1 and latest.name in warnings[0] and "falling back to task0000-start" in warnings[0]
    quarantine(latest)
    assert [p for p, _ in list_checkpoints(tmp_path)] == [Position(0)]


MALFORMED = {
    "files is a list": lambda m: m.update(files=list(m["files"])),
    "bytes is a string": lambda m: m["files"][MODEL_FILE].update(bytes="12"),
    "an entry is null": lambda m: m["files"].update({STATE_FILE: None}),
    "no position": lambda m: m.pop("position"),
    "position is a list": lambda m: m.update(position=[0, True, 5]),
    "task is a string": lambda m: m["position"].update(task="0"),
    "position of another folder": lambda m: m["position"].update(step=6),
    "a file outside the folder": lambda m: m["files"].update({"../x": m["files"][MODEL_FILE]}),
    "not an object": lambda m: (m.clear(), m.update(format=1)),
}


@pytest.mark.parametrize("edit", list(MALFORMED), ids=list(MALFORMED))
def test_a_structurally_malformed_manifest_falls_back_to_the_previous_checkpoint(tmp_path, edit):
    save_checkpoint(tmp_path, Position(0), weights(0), {"at": "start"})
    latest = save_checkpoint(tmp_path, Position(0, True, 5), weights(1), {"at": "step5"})
    manifest = json.loads((latest / MANIFEST).read_text())
    MALFORMED[edit](manifest)
    (latest / MANIFEST).write_text(json.dumps(manifest))
    warnings: list[str] = []
    ckpt, skipped = latest_valid(tmp_path, warn=warnings.append)  # no KeyError / TypeError escapes
    assert ckpt is not None and ckpt.position == Position(0) and [p.name for p, _ in skipped] == [latest.name]
    assert "falling back to task0000-start" in warnings[0]


def test_no_valid_checkpoint_returns_none(tmp_path):
    assert latest_valid(tmp_path / "missing") == (None, [])
    path = save_checkpoint(tmp_path, Position(0), weights(), {})
    (path / MANIFEST).unlink()
    warnings: list[str] = []
    ckpt, skipped = latest_valid(tmp_path, warn=warnings.append)
    assert ckpt is None and len(skipped) == 1 and "no earlier checkpoint" in warnings[0]


def test_a_crash_mid_write_leaves_no_checkpoint_under_the_final_name(tmp_path, monkeypatch):
    import fif.runner.checkpoint as ck

    save_checkpoint(tmp_path, Position(0), weights(), {"ok": True})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "fsync_dir", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, Position(0, True, 3), weights(), {})
    assert [p for p, _ in list_checkpoints(tmp_path)] == [Position(0)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_prune_keeps_the_newest_and_remove_after_drops_an_abandoned_trajectory(tmp_path):
    for pos in (Position(0), Position(0, True, 3), Position(0, True, 6), Position(1), Position(1, True, 3)):
        save_checkpoint(tmp_path, pos, weights(), {})
    (tmp_path / ".tmp-task0002-start-999999").mkdir()  # a dead writer's leftovers
    prune(tmp_path, keep_last=3)
    assert [p for p, _ in list_checkpoints(tmp_path)] == [Position(0, True, 6), Position(1), Position(1, True, 3)]
    assert not (tmp_path / ".tmp-task0002-start-999999").exists()
    remove_after(tmp_path, Position(1))
    assert [p for p, _ in list_checkpoints(tmp_path)] == [Position(0, True, 6), Position(1)]


def test_rng_streams_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    save_checkpoint(tmp_path, Position(0), {}, {"rng": capture_rng()})
    want = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_rng(load_checkpoint(tmp_path / Position(0).name).state["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2]


class _Payload:
    """A pickle that runs code when loaded (what weights_only=True must refuse)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_user_torch_files_load_only_plain_tensors(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"state_dict": weights()}, good)
    assert torch.equal(load_tensor_file(good)["w"], weights()["w"])
    st = tmp_path / "good.safetensors"
    st.write_bytes(safetensors_bytes(weights()))
    assert set(load_tensor_file(st)) == {"w", "b", "n"}

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "x": _Payload(str(marker))}, evil)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_tensor_file(evil)
    assert not marker.exists()
    with pytest.raises(FileNotFoundError):
        load_tensor_file(tmp_path / "nope.pt")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_tensor_file(bad)


def test_no_unsafe_loading_in_the_package():
    """Every torch.load passes weights_only=True; no pickle/yaml.load/allow_pickle anywhere in src/fif."""
    import re

    root = Path(__file__).parents[2] / "src" / "fif"
    for path in root.rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in m.group(1), f"{path}: {m.group(0)}"
        assert not re.search(r"\bimport pickle\b|pickle\.loads?\(|yaml\.load\(|allow_pickle=True", text), path


def test_run_lock_is_exclusive_across_processes_and_released_on_kill(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from fif.runner.folder import RunLock; RunLock(sys.argv[1]).acquire(); "
         "print('locked', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderInUseError, match=f"in use by another fif process \\(pid {child.pid}\\)"):
            RunLock(tmp_path).acquire()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with RunLock(tmp_path) as lock:  # the kernel dropped the dead holder's lock
        assert lock.held


def test_stop_signals_defer_inside_the_loop_and_interrupt_outside():
    # Start from Python's own handler: StopSignals restores whatever it found (another test in the same
    # process may have left a different disposition; that leak is tracked in the session note).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with StopSignals() as stop:
        stop.deferred = True
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
        with pytest.raises(RunInterrupted):  # a second signal stops at once
            os.kill(os.getpid(), signal.SIGINT)
    with StopSignals() as stop:
        with pytest.raises(RunInterrupted) as e:
            os.kill(os.getpid(), signal.SIGINT)
        assert e.value.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
