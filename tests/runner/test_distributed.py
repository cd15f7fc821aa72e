"""fif.runner.distributed: a mini run on 2 CPU processes (torchrun, gloo, through the CLI) against the same run in
one process; then a resume on 2 processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fif
from small_run import SMALL_RUN

SMALL = [*SMALL_RUN, "run.device=cpu", "run.threads=1", "checkpoint.every_steps=2"]


def fif_on_two_ranks(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "fif", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


@pytest.mark.slow  # a 1-process and a 2-process mini run, and a resume: ~1-2 min on 2 cores
def test_two_processes_match_one_and_only_rank0_writes(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    fif.run(fif.load_config("mini", SMALL), out_dir=one)
    proc = fif_on_two_ranks("run", "--out", str(two), "--no-progress", "train.distributed=ddp", *SMALL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("final: A_KA") == 1 and proc.stdout.count("task concepts") == 1  # rank 0 prints

    # Rank 0 alone wrote the folder: the same files as one process, each event once.
    assert sorted(p.relative_to(two).as_posix() for p in two.rglob("*")) == \
        sorted(p.relative_to(one).as_posix() for p in one.rglob("*"))
    ev1, ev2 = events(one), events(two)
    assert [e["event"] for e in ev1] == [e["event"] for e in ev2]
    assert json.loads((two / "run.json").read_text())["distributed"] == {"mode": "ddp", "world_size": 2, "backend": "gloo"}

    # Same numbers: the global batch, the gathered CLIP loss and the averaged gradients are one process's.
    losses = [(e["loss"], f["loss"]) for e, f in zip(ev1, ev2) if e["event"] == "train"]
    assert losses and all(abs(a - b) < 1e-4 for a, b in losses), losses
    s1, s2 = (json.loads((r / "summary.json").read_text()) for r in (one, two))
    assert s1["ledger"] == s2["ledger"]
    for p1, p2 in zip(s1["trajectory"], s2["trajectory"]):
        assert all(abs(p1["scores"][d] - p2["scores"][d]) <= 2.0 for d in p1["scores"]), (p1, p2)
    w1, w2 = load_file(str(one / "final.safetensors")), load_file(str(two / "final.safetensors"))
    assert set(w1) == set(w2)
    worst = max((w1[k].float() - w2[k].float()).abs().max().item() for k in w1)
    assert worst < 1e-3, worst  # AdamW turns float-rounding differences of tiny gradients into ~lr-sized steps

    # Resume on 2 processes from the last checkpoint: the same summary.
    (two / "summary.json").unlink()
    proc = fif_on_two_ranks("run", "--resume", str(two), "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((two / "summary.json").read_text())["final"] == s2["final"]
    assert [e["event"] for e in events(two)] == [e["event"] for e in ev2]
    assert len(json.loads((two / "run.json").read_text())["resumes"]) == 1
    assert torch.equal(load_file(str(two / "final.safetensors"))["logit_scale"], w2["logit_scale"])


@pytest.mark.slow  # a 1-process and a 2-process mini run, and a resume: ~1-2 min on 2 cores
def test_fsdp_run_matches_one_process_and_resumes_mid_task_exactly(tmp_path):
    """train.distributed=fsdp on 2 gloo processes: one process's losses and scores; a mid-task checkpoint
    holds every rank's optimizer shards (torch.distributed.checkpoint), and resuming from it gives the
    uninterrupted run's final weights bit for bit."""
    small = [*SMALL, "checkpoint.keep_last=100"]
    one, two = tmp_path / "one", tmp_path / "two"
    fif.run(fif.load_config("mini", small), out_dir=one)
    proc = fif_on_two_ranks("run", "--out", str(two), "--no-progress", "train.distributed=fsdp", *small)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ev1, ev2 = events(one), events(two)
    losses = [(e["loss"], f["loss"]) for e, f in zip(ev1, ev2) if e["event"] == "train"]
    assert [e["event"] for e in ev1] == [e["event"] for e in ev2]
    assert losses and all(abs(a - b) < 1e-4 for a, b in losses), losses
    s1, s2 = (json.loads((r / "summary.json").read_text()) for r in (one, two))
    assert s1["ledger"] == s2["ledger"]
    w2 = load_file(str(two / "final.safetensors"))
    worst = max((load_file(str(one / "final.safetensors"))[k] - v).abs().max().item() for k, v in w2.items())
    assert worst < 1e-3, worst  # AdamW: rounding differences of tiny gradients become ~lr-sized steps

    # Keep the checkpoints up to the last mid-task one (task 2, step 2) and resume from it.
    root = two / "checkpoints"
    mid = max(p.name for p in root.iterdir() if "step" in p.name)
    assert (root / mid / "shards" / ".metadata").is_file()
    for p in root.iterdir():
        if p.name > mid:
            shutil.rmtree(p)
    for name in ("summary.json", "final.safetensors"):
        (two / name).unlink()
    proc = fif_on_two_ranks("run", "--resume", str(two), "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((two / "summary.json").read_text())["final"] == s2["final"]
    resumed = load_file(str(two / "final.safetensors"))
    assert all(torch.equal(resumed[k], v) for k, v in w2.items())
