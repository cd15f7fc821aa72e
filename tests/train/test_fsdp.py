"""fif.train.fsdp: 2 gloo processes train fif's tiny CLIP sharded with torch's fully_shard and get the
one-process losses and weights; resuming from a torch.distributed.checkpoint of the shards is exact
(tests/fixtures/fsdp_worker.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parents[1] / "fixtures" / "fsdp_worker.py"


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``args`` (a script and its arguments) under torchrun with 2 CPU processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("method", ["finetune", pytest.param("bitfit", marks=pytest.mark.slow)])
def test_fsdp_on_two_processes_matches_one_process_and_resumes_exactly(method, tmp_path):
    proc = torchrun(str(WORKER), method, str(tmp_path / "shards"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rank 0: ok" in proc.stdout and "rank 1: ok" in proc.stdout
    assert (tmp_path / "shards" / ".metadata").exists()  # torch.distributed.checkpoint's layout
