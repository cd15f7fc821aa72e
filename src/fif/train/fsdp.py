"""Fully sharded data parallelism (torch's ``fully_shard``, FSDP2) for one task's training model.

Under ``train.distributed=fsdp`` each of W ranks holds 1/W of every parameter, gradient and AdamW moment
(DTensors sharded on dim 0); a transformer block's (or ResNet stage's) full parameters are all-gathered
just before it runs and freed after, and gradients are reduce-scattered (averaged over ranks) in backward.
Batches, the gathered CLIP loss and global BatchNorm are those of DDP (:mod:`fif.train.distributed`), so
a sharded step computes the one-process step up to float rounding.

The model that is sharded is a **copy** made for the task (:func:`sharded_copy`): the run's own model
stays a plain module, so evaluation, merging, method hooks and checkpoints at task boundaries see
ordinary tensors; :func:`full_state_dict` brings the trained weights back at the end of the task. A
mid-task checkpoint saves the shards with ``torch.distributed.checkpoint`` (:func:`save_shards`,
:func:`load_shards`), each rank writing its own, and resumes them exactly on the same number of ranks.

Works with NCCL on GPUs and with gloo on CPU (torch 2.14; ``tests/fixtures/fsdp_worker.py``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

from fif.model.loss import mark_rank_rows
from fif.train.distributed import global_batchnorm_, global_norms

ENTRY_POINTS = ("encode_image", "encode_text")  # called on the root besides forward (methods, evaluation)


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules sharded as units (all-gathered one at a time): every residual block of open_clip's
    transformers (``resblocks``) and the stages of its ModifiedResNet (``visual.layer1..4``). What is
    left (embeddings, projections, norms, logit_scale) is the root's unit."""
    units: list[nn.Module] = []
    for module in model.modules():
        blocks = getattr(module, "resblocks", None)
        if isinstance(blocks, nn.ModuleList):
            units.extend(blocks)
    visual = getattr(model, "visual", None)
    stages = [getattr(visual, f"layer{i}", None) for i in range(1, 5)]
    units.extend(stage for stage in stages if isinstance(stage, nn.Module))
    return units


def sharded_copy(model: nn.Module, trainable: set[str]) -> nn.Module:
    """A copy of ``model`` sharded over the process group's ranks, with ``requires_grad`` exactly on the
    parameters named in ``trainable``. Call it on every rank with the same weights.

    Args:
        model: the run's model (left as it is).
        trainable: names of the parameters the method trains (``method.trainable_parameters()``).

    Returns:
        The sharded copy (an ``FSDPModule``); its ``named_parameters()`` are DTensors with the model's names.
    """
    sharded = copy.deepcopy(model)
    for name, p in sharded.named_parameters():
        p.requires_grad_(name in trainable)
    global_batchnorm_(sharded)
    # fully_shard refuses 0-d parameters (logit_scale, logit_bias): in the copy they become 1-element
    # vectors (the loss broadcasts them the same; :func:`full_state_dict` gives them their shape back).
    for module in sharded.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if p.dim() == 0:
                setattr(module, name, nn.Parameter(p.detach().reshape(1), requires_grad=p.requires_grad))
    for unit in shard_units(sharded):
        fully_shard(unit)
    fully_shard(sharded)
    for entry in ENTRY_POINTS:
        if hasattr(sharded, entry):
            register_fsdp_forward_method(sharded, entry)  # all-gather the root's parameters for them too
    return sharded


class ShardedModel:
    """What ``train_task`` and ``method.loss`` see in a sharded task (the counterpart of DDP's
    :class:`~fif.train.distributed.DataParallelModel`): BatchNorm over the global batch, and the features
    of a call marked as this rank's rows so the CLIP loss gathers them. Every other attribute is the
    sharded module's."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, images: torch.Tensor, tokens: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        with global_norms():
            out = self.module(images, tokens, *args, **kwargs)
        if isinstance(out, dict) and "image_features" in out and "text_features" in out:
            mark_rank_rows(out["image_features"], out["text_features"])
        return out

    def encode_image(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with global_norms():
            return self.module.encode_image(*args, **kwargs)

    def encode_text(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with global_norms():
            return self.module.encode_text(*args, **kwargs)

    def train(self, mode: bool = True) -> "ShardedModel":
        self.module.train(mode)
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)


def full_state_dict(sharded: nn.Module, like: nn.Module) -> dict[str, torch.Tensor]:
    """The sharded model's whole weights as plain tensors in the shapes of ``like`` (the model it was
    copied from), on every rank (a collective: all-gathers)."""
    shapes = {k: v.shape for k, v in like.state_dict().items()}
    full = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True))
    return {k: v.reshape(shapes[k]) if k in shapes else v for k, v in full.items()}


def save_shards(folder: Path, sharded: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write every rank's shards of the weights and the optimizer state to ``folder`` with
    ``torch.distributed.checkpoint`` (a collective; every rank writes its own files, rank 0 the metadata)."""
    state = {"model": get_model_state_dict(sharded), "optimizer": get_optimizer_state_dict(sharded, optimizer)}
    dcp.save(state, checkpoint_id=str(folder))


def load_shards(folder: Path, sharded: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load what :func:`save_shards` wrote into ``sharded`` and ``optimizer`` (in place; a collective).

    Raises:
        CheckpointException: the folder is missing or was written by another number of ranks or model.
    """
    state = {"model": get_model_state_dict(sharded), "optimizer": get_optimizer_state_dict(sharded, optimizer)}
    dcp.load(state, checkpoint_id=str(folder))
    set_model_state_dict(sharded, state["model"])
    set_optimizer_state_dict(sharded, optimizer, state["optimizer"])
