"""``train.distributed=fsdp`` in the runner: each task trains a sharded copy of the run's model.

At the task's start (or a mid-task resume) :func:`shard_for_task` makes the copy (:mod:`fif.train.fsdp`)
and the task's optimizer is built over its shards; :func:`publish_weights` all-gathers the trained weights
into the run's own model wherever a plain model is needed (a checkpoint, an evaluation inside the task,
the task's end), so evaluation, merging, method hooks and the final weights are those of any other run.
A mid-task checkpoint holds the whole weights (as always) and every rank's optimizer shards, written with
``torch.distributed.checkpoint`` into the checkpoint's ``shards/`` folder (:func:`write_shards`); a resume
on the same number of ranks loads them (:func:`read_shards`) and continues exactly.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from fif.core.io import CheckpointError
from fif.runner.checkpoint import CHECKPOINT_DIR
from fif.runner.spec import RunSpec
from fif.train.fsdp import full_state_dict, load_shards, save_shards, sharded_copy

SHARDS_DIR = "shards"  # in a mid-task checkpoint of a sharded run


def sharded(spec: RunSpec) -> bool:
    """True when this run shards its weights (``train.distributed=fsdp`` on more than one rank)."""
    return spec.cfg.train.distributed == "fsdp" and spec.ranks.world_size > 1


def shard_for_task(spec: RunSpec, trainable: set[str]) -> torch.nn.Module:
    """A sharded copy of the run's model for this task, training the parameters named in ``trainable``
    (a collective). Rank 0's weights first go to every rank, as DDP's construction does: only rank 0 holds
    the temporal merger, whose start weights (``merge.init``) the other ranks do not have."""
    spec.ranks.broadcast_module_(spec.clip.model)
    return sharded_copy(spec.clip.model, trainable)


def publish_weights(spec: RunSpec, module: torch.nn.Module | None) -> None:
    """Load the sharded copy's weights, whole, into the run's model on every rank (a collective; no-op
    without a sharded copy)."""
    if module is not None:
        spec.clip.model.load_state_dict(full_state_dict(module, spec.clip.model))


def write_shards(spec: RunSpec, module: torch.nn.Module, optimizer: torch.optim.Optimizer, name: str) -> Path:
    """Write every rank's shards of ``module`` and ``optimizer`` next to the checkpoints (a collective);
    returns the folder, which the checkpoint then takes in (``save_checkpoint(folders=...)``)."""
    folder = spec.out_dir / CHECKPOINT_DIR / f".shards-{name}"
    if spec.ranks.is_main:
        shutil.rmtree(folder, ignore_errors=True)  # left by a run killed while writing
    spec.ranks.barrier()
    save_shards(folder, module, optimizer)
    return folder


def read_shards(checkpoint: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load a sharded checkpoint's optimizer shards (and the weights' shards) into this task's copy.

    Raises:
        CheckpointError: the checkpoint has no shards, or they were written by another number of ranks.
    """
    folder = checkpoint / SHARDS_DIR
    if not folder.is_dir():
        raise CheckpointError(
            f"{checkpoint}: a mid-task checkpoint of a train.distributed=fsdp run without its {SHARDS_DIR}/ folder; "
            "resume from an earlier checkpoint (delete this one) or start again"
        )
    try:
        load_shards(folder, module, optimizer)
    except Exception as e:  # torch.distributed.checkpoint's errors are long; the cause stays chained
        raise CheckpointError(
            f"{folder}: the sharded optimizer state does not load ({type(e).__name__}); resume on the number of "
            "processes that wrote it"
        ) from e
