"""Data-parallel training over processes launched by torchrun: the process group, each rank's slice of
the global batch, DDP, CLIP features gathered with gradient, and BatchNorm over the global batch.

A data-parallel run computes what the single-process run computes (up to float rounding), so budgets,
MAFs and results do not depend on the number of GPUs (``docs/scaling.md``):

- **Batches.** Batch k of a task is the *global* batch ``MixedBatches[k]``, whose row j is a pure function
  of (seed, task, k, j). Rank r of W trains on its rows r, r+W, r+2W, ... and decodes only those
  (:class:`ShardedBatches`); strided rows give every rank about the same share of pretraining,
  current-task and buffer samples.
  ``train.batch_size`` must be a multiple of W.
- **CLIP loss.** The features of a rank's rows are gathered from every rank with gradient
  (:func:`all_gather_with_grad`) and put back in global row order (:func:`global_batch_features`, called
  by :func:`fif.methods.base.clip_contrastive_loss`), so every rank computes the contrastive loss of the
  whole global batch, the same number as one process (open_clip's ``ClipLoss(gather_with_grad=True,
  local_loss=False)``). Gradients: the gather's backward sums over ranks the gradient of every rank's
  copy of the loss L, so rank r's parameters get W·∂L/∂θ through its own rows; DDP averages over the
  W ranks, which leaves Σ_r ∂L/∂θ|rows r = ∂L/∂θ, the single-process gradient. Terms computed per rank
  (penalties, distillation means over the rank's rows) are averaged over ranks by DDP, i.e. a mean over
  the global batch when the slices are equal.
- **BatchNorm** (open_clip's ModifiedResNet, e.g. ``fif-mini-rn32``) normalises over the global batch
  during training steps (:class:`GlobalBatchNorm2d`; works with gloo on CPU and NCCL on GPUs).

Only features that came out of the model's forward on the step's batch (through
:class:`DataParallelModel`) are gathered; anything else a method encodes (replay reservoirs, reference
captions) stays per rank. Everything here is a no-op in a single process.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import dataclasses
import inspect
import logging
import os
from datetime import timedelta
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fif.model.loss import all_reduce_with_grad, mark_rank_rows

log = logging.getLogger(__name__)

MODES = ("none", "ddp", "fsdp")  # train.distributed
T = TypeVar("T")
D = TypeVar("D")
M = TypeVar("M")


# ----------------------------------------------------------------------------------------------
# The process group


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's environment, or None when not launched by it."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return rank, world, int(os.environ.get("LOCAL_RANK", rank))


def launched() -> bool:
    """True in a process that torchrun started with more than one process in the job."""
    env = torchrun_env()
    return env is not None and env[1] > 1


def is_main() -> bool:
    """True on rank 0 of a data-parallel job, and in any single process (the one that writes and prints)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    env = torchrun_env()
    return env is None or env[0] == 0


def _portable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling (to raise it on the other ranks too), else a RuntimeError with its text.

    deepcopy goes through the same ``__reduce_ex__`` as pickling, without a pickle round trip in fif.
    """
    try:
        if str(copy.deepcopy(error)) == str(error):
            return error
    except Exception:
        pass
    return RuntimeError(f"{type(error).__name__}: {error}")


class Ranks:
    """This process's place in a data-parallel job, and the few collectives the runner needs.

    Build it with :func:`start`. Collectives must be called by every rank in the same order.
    """

    def __init__(self, rank: int, world_size: int, local_rank: int, device: torch.device, owns_group: bool):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.device, self.owns_group = device, owns_group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str:
        return dist.get_backend()

    def barrier(self) -> None:
        dist.barrier(device_ids=[self.local_rank]) if self.device.type == "cuda" else dist.barrier()

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (pickled)."""
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def agree(self, flag: bool) -> bool:
        """True on every rank if it is True on any rank (a host sync: call it where one happens anyway)."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())  # sync

    def agree_at(self, flag: bool, sync_point: bool) -> bool:
        """:meth:`agree` at a ``sync_point`` (a step where the host syncs anyway, e.g. a logging step);
        False elsewhere, so that the ranks of a step loop stay in step without a sync per step."""
        return self.agree(flag) if sync_point else False

    def on_main(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` on rank 0 only; its exception is raised on every rank. Returns its value on rank 0, else None."""
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except BaseException as e:  # noqa: BLE001 - re-raised below, on every rank
                error = e
        shared = self.broadcast(None if error is None else _portable(error))
        if error is not None:
            raise error
        if shared is not None:
            raise shared
        return result

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """The body runs on rank 0, then on the other ranks (which find what it cached: base models, data).

        An exception on rank 0 is raised on every rank.
        """
        if self.is_main:
            try:
                yield
            except BaseException as e:
                self.broadcast(_portable(e))
                raise
            self.broadcast(None)
        else:
            error = self.broadcast(None)
            if error is not None:
                raise error
            yield

    def shard(self, batches: torch.utils.data.Dataset) -> "ShardedBatches":
        return ShardedBatches(batches, self.rank, self.world_size)

    def gather_chunks(self, mine: list[torch.Tensor], chunks: int) -> list[torch.Tensor]:
        """All ``chunks`` chunks in order, on this rank's device, where rank r holds chunks r, r+W, ...
        (``mine``; e.g. the embeddings of a sharded evaluation). Exact: the tensors travel pickled.

        A collective: every rank calls it with the same ``chunks``.
        """
        held: list[Any] = [None] * self.world_size
        # all_gather_object: chunks of any shape and number per rank, on gloo and NCCL alike; an evaluation
        # gathers a few MB per dataset, negligible next to encoding the images.
        dist.all_gather_object(held, [t.cpu() for t in mine])
        return [held[c % self.world_size][c // self.world_size].to(self.device) for c in range(chunks)]

    def gather_objects(self, obj: T) -> list[T]:
        """Every rank's ``obj`` (pickled), in rank order, on every rank."""
        held: list[Any] = [None] * self.world_size
        dist.all_gather_object(held, obj)
        return held

    def broadcast_module_(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers in ``module`` on every rank (in place; the same architecture everywhere)."""
        for t in module.state_dict().values():
            dist.broadcast(t.data, src=0)

    def wrap(self, model: nn.Module) -> "DataParallelModel":
        """DDP over ``model`` for one task (build it after the task's start weights are loaded: DDP
        broadcasts rank 0's parameters and buffers to every rank, and registers the parameters that
        require grad now)."""
        return DataParallelModel(model, self)

    def prepare_model_(self, model: nn.Module) -> None:
        """Make ``model``'s BatchNorm layers normalise over the global batch in training steps (in place)."""
        global_batchnorm_(model)

    def close(self) -> None:
        """Destroy the process group now if :func:`start` created it (else it is destroyed at exit)."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


class Solo:
    """One process as a world of size 1: the collectives of :class:`Ranks` with nothing to talk to, so the
    runner is written once for both (``run``/``resume`` never ask whether they are distributed)."""

    rank, world_size, local_rank, is_main = 0, 1, 0, True

    def barrier(self) -> None:
        pass

    def broadcast(self, obj: T) -> T:
        return obj

    def agree(self, flag: bool) -> bool:
        return flag

    def agree_at(self, flag: bool, sync_point: bool) -> bool:
        return flag  # nobody to wait for: one process stops at any step

    def on_main(self, fn: Callable[[], T]) -> T:
        return fn()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        yield

    def shard(self, batches: D) -> D:
        return batches  # every row is this process's

    def gather_chunks(self, mine: list[torch.Tensor], chunks: int) -> list[torch.Tensor]:
        return mine

    def gather_objects(self, obj: T) -> list[T]:
        return [obj]

    def broadcast_module_(self, module: nn.Module) -> None:
        pass

    def wrap(self, model: M) -> M:
        return model

    def prepare_model_(self, model: nn.Module) -> None:
        pass


def _destroy_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def start(mode: str, device: str = "auto", timeout_minutes: float = 120.0) -> Ranks | None:
    """Join torchrun's process group for ``train.distributed=mode`` (nccl on CUDA, gloo on CPU).

    Args:
        mode: ``none``, ``ddp`` or ``fsdp`` (the same process group; fsdp shards the weights, :mod:`fif.train.fsdp`).
        device: ``run.device``: ``auto``, ``cuda`` or ``cpu`` (rank r uses ``cuda:LOCAL_RANK``).
        timeout_minutes: how long a rank waits in a collective (e.g. while rank 0 evaluates).

    Returns:
        The job's :class:`Ranks`, or None to run in this one process: ``mode=none`` outside torchrun, or
        ``mode=ddp`` without torchrun (a warning) or with one process.

    Raises:
        ValueError: several processes with ``mode=none``; an explicit ``cuda:N`` device.
    """
    env = torchrun_env()
    if mode not in MODES:
        raise ValueError(f"train.distributed={mode!r} is not one of {', '.join(MODES)}")
    if mode == "none":
        if env is not None and env[1] > 1:
            raise ValueError(
                f"launched by torchrun with {env[1]} processes but train.distributed=none: add train.distributed=ddp "
                "(or launch one process)"
            )
        return None
    if env is None:
        log.warning("train.distributed=%s but not launched by torchrun (no RANK/WORLD_SIZE): running in one process", mode)
        return None
    rank, world, local_rank = env
    if world == 1:
        return None
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(
            f"run.device={device!r}: with train.distributed={mode} rank r runs on cuda:LOCAL_RANK (or the CPU); "
            "set run.device=auto, cuda or cpu and choose GPUs with CUDA_VISIBLE_DEVICES"
        )
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError("run.device=cuda but no CUDA device is available; use run.device=cpu (gloo) or auto")
        torch.cuda.set_device(local_rank)  # before anything allocates: "cuda" then means this rank's GPU
    torch_device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    backend = "nccl" if use_cuda else "gloo"
    owns = not dist.is_initialized()
    if owns:
        # One group per process, kept until exit: the runs of a sweep share it (creating a second default
        # group on torchrun's store after destroying the first can hang in its first collective).
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
        atexit.register(_destroy_group)
    elif dist.get_backend() != backend:
        raise ValueError(
            f"this process's group uses {dist.get_backend()}, but run.device={device!r} needs {backend}; "
            "give every run of the job the same run.device"
        )
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise ValueError(f"the process group ({dist.get_rank()}/{dist.get_world_size()}) is not torchrun's ({rank}/{world})")
    return Ranks(rank, world, local_rank, torch_device, owns)


def check_batch_size(batch_size: int, world_size: int) -> None:
    """Raises ValueError unless the global batch splits evenly over the ranks."""
    if batch_size % world_size:
        lower, upper = batch_size - batch_size % world_size, batch_size + world_size - batch_size % world_size
        raise ValueError(
            f"train.batch_size={batch_size} does not split over {world_size} processes; use a multiple of "
            f"{world_size} (e.g. {lower or upper} or {upper}) - the global batch is the same on any number of GPUs"
        )


# ----------------------------------------------------------------------------------------------
# Collectives with gradient


# ----------------------------------------------------------------------------------------------
# BatchNorm over the global batch

_SYNC_NORMS = False  # True while DataParallelModel runs the model in a training step


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-step statistics are those of the global batch (every rank's rows).

    Outside a data-parallel training step (evaluation, task hooks, budget tracing, single process) it is
    a plain BatchNorm2d. Statistics are two-pass (mean, then mean squared deviation), each summed over
    ranks with :func:`all_reduce_with_grad`, in fp32; running statistics update as torch's BatchNorm
    does (unbiased variance). Same parameters, buffers and state_dict keys as BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (_SYNC_NORMS and self.training and dist.is_initialized() and x.device.type != "meta"):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = (1, -1, *([1] * (x.dim() - 2)))
        x32 = x.float()
        count = x32.new_tensor([x32.numel() // x32.shape[1]])
        totals = all_reduce_with_grad(torch.cat([x32.sum(dims), count]))
        n = totals[-1]
        mean = totals[:-1] / n
        centered = x32 - mean.view(shape)
        var = all_reduce_with_grad((centered * centered).sum(dims)) / n
        y = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                self.running_var.mul_(1 - f).add_(var.detach() * (n / (n - 1).clamp_min(1)), alpha=f)
        return y.to(x.dtype)


def global_batchnorm_(model: nn.Module) -> int:
    """Turn the model's BatchNorm2d layers into :class:`GlobalBatchNorm2d` in place (same parameters,
    buffers and keys); returns how many. Other norms (LayerNorm: ViTs, text towers) need nothing."""
    swapped = 0
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = GlobalBatchNorm2d
            swapped += 1
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and type(m) is not GlobalBatchNorm2d for m in model.modules()):
        log.warning("BatchNorm layers other than BatchNorm2d normalise per rank, not over the global batch")
    return swapped


@contextlib.contextmanager
def global_norms() -> Iterator[None]:
    """Inside: :class:`GlobalBatchNorm2d` layers normalise over the global batch (a data-parallel training step)."""
    global _SYNC_NORMS
    previous, _SYNC_NORMS = _SYNC_NORMS, True
    try:
        yield
    finally:
        _SYNC_NORMS = previous


# ----------------------------------------------------------------------------------------------
# The step's batch and model on each rank


def rank_rows(batch: Any, rank: int, world_size: int) -> Any:
    """Rows rank, rank+W, ... of a batch dataclass (every tensor field whose first dim is the batch)."""
    n = len(batch)
    check_batch_size(n, world_size)
    changes = {}
    for f in dataclasses.fields(batch):
        value = getattr(batch, f.name)
        if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == n:
            changes[f.name] = value[rank::world_size].contiguous()
    return dataclasses.replace(batch, **changes)


class ShardedBatches(torch.utils.data.Dataset):
    """Item k is this rank's rows of the global batch k of ``batches`` (e.g. a task's MixedBatches).

    A dataset with a ``rows(step, rank, world_size)`` method (MixedBatches: every row is a pure function
    of seed, task, step and row) builds only this rank's rows, so W ranks decode the global batch once
    between them; any other dataset's whole batch is built and sliced (:func:`rank_rows`). Either way the
    rows are those of the one-process batch.
    """

    def __init__(self, batches: torch.utils.data.Dataset, rank: int, world_size: int):
        self.batches, self.rank, self.world_size = batches, rank, world_size

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __getitem__(self, step: int) -> Any:
        rows = getattr(self.batches, "rows", None)
        if rows is not None:
            return rows(step, self.rank, self.world_size)
        return rank_rows(self.batches[step], self.rank, self.world_size)


class _Dispatch(nn.Module):
    """Lets DDP run any of the model's entry points (forward, encode_image, encode_text) as its forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, entry: str, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs) if entry == "forward" else getattr(self.model, entry)(*args, **kwargs)


class DataParallelModel:
    """What ``train_task`` and ``method.loss`` see instead of the model in a data-parallel task.

    Calling it, ``encode_image`` and ``encode_text`` run through DDP (whose backward all-reduces the
    gradients, overlapped with the backward) with BatchNorm over the global batch; the features of a
    call (the step's batch) are marked so the CLIP loss gathers them. Every other attribute is the
    model's (``logit_scale``, parameters, ``visual``, ...).
    """

    def __init__(self, model: nn.Module, ranks: Ranks):

        self.module = model
        # Buffers are synced at construction; BatchNorm statistics are global, so they stay equal after it.
        no_buffer_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(
            DistributedDataParallel.__init__).parameters else {"broadcast_buffers": False}
        self._ddp = DistributedDataParallel(
            _Dispatch(model), device_ids=[ranks.local_rank] if ranks.device.type == "cuda" else None, **no_buffer_sync
        )

    def __call__(self, images: torch.Tensor, tokens: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        with global_norms():
            out = self._ddp("forward", images, tokens, *args, **kwargs)
        if isinstance(out, dict) and "image_features" in out and "text_features" in out:
            mark_rank_rows(out["image_features"], out["text_features"])
        return out

    def encode_image(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with global_norms():
            return self._ddp("encode_image", *args, **kwargs)

    def encode_text(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with global_norms():
            return self._ddp("encode_text", *args, **kwargs)

    def train(self, mode: bool = True) -> "DataParallelModel":
        self._ddp.train(mode)
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)
