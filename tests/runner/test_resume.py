"""Exact resume: a mini run killed with SIGKILL (or stopped with SIGTERM) and resumed ends bit-identical to the
uninterrupted run — summary.json, final.safetensors, and events.jsonl up to wall-clock fields.

Runs are tiny (random-init model, batch 8, 2 tasks x 8 steps, two eval datasets) and go through the real
CLI in subprocesses. One kill/resume runs in the default suite; the sweep over kill points and seeds is slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fif.runner.checkpoint import CHECKPOINT_DIR, list_checkpoints
from fif.runner.folder import without_timing

MINI = [
    "model.pretrained=null", "budget.ft_steps=16", "stream.tasks=2", "train.batch_size=8", "train.log_every=4",
    "checkpoint.every_steps=3", "checkpoint.keep_last=2", "run.threads=1", "eval.min_samples=10",
    "data.options={pool_size: 200, train_per_class: 6, test_per_class: 3, eval_size: 30, retrieval_train: 30, "
    "retrieval_test: 10}",
    "stream.datasets=[mini_digits,mini_letters]", "eval.datasets=[mini_digits,mini_colors]",
]
ENV = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}


def fif_run(*args: str) -> list[str]:
    return [sys.executable, "-m", "fif", "run", "--no-progress", *args]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(fif_run(*args), env=ENV, capture_output=True, text=True, timeout=timeout)


def events(run: Path) -> list[dict]:
    path = run / "events.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            break
    return out


def start_and_kill(out: Path, until, sig: int = signal.SIGKILL, extra: tuple[str, ...] = (), timeout: float = 300,
                   resume: bool = False):
    """Start a run (or resume ``out``) and send ``sig`` once ``until(out)`` is true; returns the exited process."""
    cmd = fif_run("--resume", str(out)) if resume else fif_run("--out", str(out), *MINI, *extra)
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and not until(out):
            if time.monotonic() > deadline:
                raise TimeoutError("the run never reached the kill point")
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before the kill point:\n{proc.stderr.read()}"
        proc.send_signal(sig)
        proc.stdout_text, proc.stderr_text = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc


def after_train_events(n: int):
    return lambda out: sum(e["event"] == "train" for e in events(out)) >= n


def after_checkpoints(n_step_checkpoints: int):
    def until(out: Path) -> bool:
        return sum(p.started for p, _ in list_checkpoints(out / CHECKPOINT_DIR)) >= n_step_checkpoints

    return until


def after_event(kind: str, task: int):
    return lambda out: any(e["event"] == kind and e.get("task") == task for e in events(out))


def assert_identical(run: Path, reference: Path) -> None:
    assert (run / "summary.json").read_bytes() == (reference / "summary.json").read_bytes()
    assert (run / "final.safetensors").read_bytes() == (reference / "final.safetensors").read_bytes()
    got, want = [without_timing(e) for e in events(run)], [without_timing(e) for e in events(reference)]
    assert got == want


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    done = run_cli("--out", str(out), *MINI)
    assert done.returncode == 0, done.stderr
    return out


def test_sigkill_mid_task_then_resume_is_bit_identical(reference, tmp_path):
    out = tmp_path / "run"
    start_and_kill(out, after_train_events(3))  # task 1, between its checkpoints
    assert not (out / "summary.json").exists()
    done = run_cli("--resume", str(out))
    assert done.returncode == 0, done.stderr
    assert_identical(out, reference)
    resumes = json.loads((out / "run.json").read_text())["resumes"]
    assert len(resumes) == 1 and resumes[0]["checkpoint"].startswith("task0001-step")


@pytest.mark.slow
@pytest.mark.parametrize("kill_point", [
    pytest.param(after_train_events(1), id="early-task0"),
    pytest.param(after_checkpoints(1), id="right-after-a-checkpoint"),
    pytest.param(after_event("task_end", 0), id="around-task-end"),
    pytest.param(after_event("eval", 0), id="after-task-eval"),
    pytest.param(after_train_events(4), id="end-of-last-task"),
])
def test_sigkill_anywhere_then_resume_is_bit_identical(reference, tmp_path, kill_point):
    out = tmp_path / "run"
    start_and_kill(out, kill_point)
    done = run_cli("--resume", str(out))
    assert done.returncode == 0, done.stderr
    assert_identical(out, reference)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_other_seeds_twice_killed(tmp_path, seed):
    ref = tmp_path / "ref"
    assert run_cli("--out", str(ref), *MINI, f"run.seed={seed}").returncode == 0
    out = tmp_path / "run"
    start_and_kill(out, after_train_events(seed), extra=(f"run.seed={seed}",))
    start_and_kill(out, after_train_events(3), resume=True)  # killed again while resuming
    done = run_cli("--resume", str(out))
    assert done.returncode == 0, done.stderr
    assert_identical(out, ref)


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_exits_cleanly(reference, tmp_path):
    out = tmp_path / "run"
    proc = start_and_kill(out, after_train_events(1), sig=signal.SIGTERM)  # at step 4 of task 0
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr_text
    stopped = list_checkpoints(out / CHECKPOINT_DIR)[-1][0]
    assert stopped.task == 0 and stopped.started and stopped.step >= 4  # the step it was signalled at
    assert f"checkpoint saved: {out / CHECKPOINT_DIR / stopped.name}" in proc.stderr_text
    assert f"resume with: fif run --resume {out}" in proc.stderr_text
    assert "Traceback" not in proc.stderr_text
    done = run_cli("--resume", str(out))
    assert done.returncode == 0, done.stderr
    assert_identical(out, reference)


@pytest.mark.slow
def test_a_corrupt_latest_checkpoint_falls_back_and_still_resumes_exactly(reference, tmp_path):
    out = tmp_path / "run"
    start_and_kill(out, after_train_events(3))
    found = list_checkpoints(out / CHECKPOINT_DIR)
    assert len(found) == 2
    latest = found[-1][1] / "model.safetensors"
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit in the weights
    latest.write_bytes(bytes(data))
    done = run_cli("--resume", str(out))
    assert done.returncode == 0, done.stderr
    assert f"checkpoint {found[-1][1].name} is unusable" in done.stderr and "falling back to" in done.stderr
    assert (out / CHECKPOINT_DIR / f"{found[-1][1].name}.corrupt").is_dir() or not found[-1][1].exists()
    assert_identical(out, reference)


def in_second_task(out: Path) -> bool:
    return any(p.task == 1 and p.started and p.step >= 1 for p, _ in list_checkpoints(out / CHECKPOINT_DIR))


@pytest.mark.slow
@pytest.mark.parametrize("method", [
    pytest.param(["method.name=er"], id="er"),
    pytest.param(["method.name=derpp"], id="derpp"),
    pytest.param(["method.name=gdumb"], id="gdumb"),
    pytest.param(["method.name=lwf"], id="lwf"),
    pytest.param(["method.name=zscl", "method.reference_size=20", "method.ensemble=average", "method.average_every=2"],
                 id="zscl"),
])
def test_method_state_resumes_bit_identical(tmp_path, method):
    """Buffers (reservoir, embeddings, GDumb's memory, their generators), LwF's teacher and ZSCL's reference
    set and weight average come back from a mid-task checkpoint of the second task exactly."""
    extra = ("budget.ft_steps=40", "checkpoint.every_steps=1", *method)
    ref, out = tmp_path / "ref", tmp_path / "run"
    done = run_cli("--out", str(ref), *MINI, *extra)
    assert done.returncode == 0, done.stderr
    start_and_kill(out, in_second_task, extra=extra)
    done = run_cli("--resume", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "run.json").read_text())["resumes"][0]["checkpoint"].startswith("task0001-step")
    assert_identical(out, ref)
