"""fif.train.distributed: batch shards, the gather order, launch rules, config checks; one 2-process gloo step
(tests/fixtures/ddp_worker.py) against the same step in one process."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fif.config import load_config
from fif.core.typed import ConfigError
from fif.data.batch import Batch
from fif.model.loss import strided_to_global
from fif.train.distributed import (
    GlobalBatchNorm2d,
    Ranks,
    ShardedBatches,
    Solo,
    check_batch_size,
    global_batchnorm_,
    is_main,
    rank_rows,
    start,
)

WORKER = Path(__file__).parents[1] / "fixtures" / "ddp_worker.py"


def torchrun(*args: str, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``args`` (a script and its arguments) under torchrun with ``nproc`` CPU processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def batch(n: int = 8) -> Batch:
    return Batch(torch.arange(n * 3 * 2 * 2, dtype=torch.float32).view(n, 3, 2, 2), torch.arange(n * 4).view(n, 4),
                 torch.arange(n, dtype=torch.int8) % 3, torch.arange(n))


def test_rank_rows_are_strided_and_gather_restores_global_order():
    b, world = batch(12), 4
    shards = [rank_rows(b, r, world) for r in range(world)]
    assert [len(s) for s in shards] == [3] * 4
    assert torch.equal(shards[1].labels, torch.tensor([1, 5, 9]))
    assert all(s.source.dtype == torch.int8 and s.images.is_contiguous() for s in shards)
    for field in ("images", "tokens", "source", "labels"):
        gathered = torch.cat([getattr(s, field) for s in shards])  # what all_gather returns (rank order)
        assert torch.equal(strided_to_global(gathered, world), getattr(b, field))


def test_sharded_batches_index_like_the_global_batches():
    batches = [batch(8), batch(8)]
    sharded = ShardedBatches(batches, rank=1, world_size=2)
    assert len(sharded) == 2 and torch.equal(sharded[0].labels, torch.tensor([1, 3, 5, 7]))


def test_one_process_is_a_world_of_size_1():
    solo, batches, model = Solo(), [batch(8)], nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    assert solo.shard(batches) is batches and solo.wrap(model) is model  # every row, no DDP
    solo.prepare_model_(model)
    assert type(model[1]) is nn.BatchNorm2d
    assert solo.agree_at(True, sync_point=False) and not solo.agree_at(False, sync_point=True)  # stops at any step
    assert solo.broadcast(batches) is batches and solo.on_main(lambda: 3) == 3


def test_ranks_agree_only_at_sync_points():
    ranks = Ranks(0, 2, 0, torch.device("cpu"), owns_group=False)  # no process group: a collective would raise
    assert ranks.agree_at(True, sync_point=False) is False
    with pytest.raises((RuntimeError, ValueError)):
        ranks.agree_at(True, sync_point=True)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    ranks.prepare_model_(model)
    assert type(model[1]) is GlobalBatchNorm2d


def test_batch_size_must_split_over_ranks():
    check_batch_size(512, 8)
    with pytest.raises(ValueError, match=r"batch_size=510 does not split over 8 processes.*504 or 512"):
        check_batch_size(510, 8)
    with pytest.raises(ValueError, match="does not split"):
        rank_rows(batch(6), 0, 4)


def test_single_process_launch_rules(monkeypatch, caplog):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert start("none") is None and is_main()
    assert start("ddp", "cpu") is None
    assert "not launched by torchrun" in caplog.text
    assert start("fsdp", "cpu") is None  # one process: nothing to shard over, as with ddp
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not is_main()
    with pytest.raises(ValueError, match="train.distributed=none: add train.distributed=ddp"):
        start("none")
    with pytest.raises(ValueError, match="run.device='cuda:1'.*cuda:LOCAL_RANK"):
        start("ddp", "cuda:1")


def test_config_checks():
    assert load_config("mini", ["train.distributed=ddp"]).train.distributed == "ddp"
    assert load_config("mini", ["train.distributed=fsdp", "method.name=lnfit"]).train.distributed == "fsdp"
    with pytest.raises(ConfigError, match="train.distributed=fsdp: method 'ewc' cannot train sharded weights.*"
                                          "train.distributed=ddp.*finetune, locked_text, locked_image, bitfit, lnfit"):
        load_config("mini", ["train.distributed=fsdp", "method.name=ewc"])
    with pytest.raises(ConfigError, match="optimizer_reset=false with train.distributed=fsdp"):
        load_config("mini", ["train.distributed=fsdp", "train.optimizer_reset=false"])
    with pytest.raises(ConfigError, match="merge online_ema with train.distributed=fsdp"):
        load_config("mini", ["train.distributed=fsdp", "merge.preset=online_ema"])
    with pytest.raises(ConfigError, match="grad_accum_steps=2 with train.distributed=fsdp"):
        load_config("mini", ["train.distributed=fsdp", "train.grad_accum_steps=2"])
    with pytest.raises(ConfigError, match="grad_accum_steps=2 with train.distributed=ddp"):
        load_config("mini", ["train.distributed=ddp", "train.grad_accum_steps=2"])
    with pytest.raises(ConfigError, match="did you mean ddp"):
        load_config("mini", ["train.distributed=dpp"])


def test_global_batchnorm_is_plain_batchnorm_outside_training_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.LayerNorm(2))
    reference = copy.deepcopy(model)
    assert global_batchnorm_(model) == 1 and type(model[1]) is GlobalBatchNorm2d
    assert set(model.state_dict()) == set(reference.state_dict())
    x = torch.randn(5, 3, 2, 2)
    assert torch.equal(model(x), reference(x))  # train mode, no process group: torch's BatchNorm
    assert torch.equal(model[1].running_mean, reference[1].running_mean)


def test_two_process_step_matches_one_process():
    """Gather with grad, DDP averaging and global BatchNorm give one process's loss, gradients and stats."""
    proc = torchrun(str(WORKER))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rank 0: ok" in proc.stdout and "rank 1: ok" in proc.stdout
