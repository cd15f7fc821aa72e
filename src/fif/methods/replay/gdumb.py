"""GDumb: a greedy class-balanced memory, and a retrain from θ0 on it at every task.
See :mod:`fif.methods.replay`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fif.core.seeding import rng_for, seeded_generator
from fif.data.batch import Batch
from fif.methods.base import BaseMethod, LossOutput, TaskInfo
from fif.methods.common import check_choice, check_positive, stand_in
from fif.methods.registry import register_method
from fif.methods.replay.buffers import IMAGE_DTYPES, ImageCodec, dtype_field, load_rows
from fif.model.clip import Clip
from fif.model.loss import clip_features

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# GDumb


class BalancedMemory:
    """GDumb's greedy class-balanced memory (Prabhu et al. 2020, §3 "sampler").

    A sample of class y is stored while the memory has room; once it is full, only if y holds fewer
    than size / |classes seen| samples, replacing a random sample of the largest class. Bookkeeping is
    on the host (it runs in a task hook); images and tokens live on the device.
    """

    def __init__(self, clip: Clip, size: int, image_dtype: str):
        device = clip.device
        self.size, self.codec, self.device = size, ImageCodec(clip, image_dtype), device
        s = clip.image_size
        self.images = torch.zeros(size, 3, s, s, dtype=self.codec.dtype, device=device)
        self.tokens = torch.zeros(size, int(clip.tokenize([""]).shape[-1]), dtype=torch.long, device=device)
        self.labels = np.full(size, -1, dtype=np.int64)  # class id per slot (−1 empty)
        self.classes: list[str] = []  # class id → concept
        self.count = 0

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels[: self.count], minlength=len(self.classes))

    def _class_id(self, key: str) -> int:
        if key not in self.classes:
            self.classes.append(key)
        return self.classes.index(key)

    def offer(self, key: str, counts: list[int], rng: np.random.Generator) -> int | None:
        """The slot a sample of class ``key`` goes to, or None; updates the bookkeeping (``counts`` too)."""
        c = self._class_id(key)
        if c == len(counts):
            counts.append(0)
        if self.count < self.size:
            slot = self.count
            self.count += 1
        else:
            if counts[c] >= self.size / len(self.classes):
                return None
            largest = int(np.argmax(counts))  # ties: the class seen first
            candidates = np.flatnonzero(self.labels == largest)
            slot = int(candidates[rng.integers(len(candidates))])
            counts[largest] -= 1
        self.labels[slot] = c
        counts[c] += 1
        return slot

    def add(self, batch: Batch, keys: list[str], rng: np.random.Generator) -> int:
        """Offer every row of ``batch`` (class ``keys[i]``) in order; returns how many were stored."""
        counts = self.class_counts().tolist()
        writes: dict[int, int] = {}  # slot → row (a later row on the same slot wins)
        for row, key in enumerate(keys):
            slot = self.offer(key, counts, rng)
            if slot is not None:
                writes[slot] = row
        if writes:
            slots = torch.tensor(list(writes), device=self.device)
            rows = torch.tensor(list(writes.values()), device=batch.images.device)
            with torch.no_grad():
                self.images[slots] = self.codec.encode(batch.images.index_select(0, rows)).to(self.device)
                self.tokens[slots] = batch.tokens.index_select(0, rows).long().to(self.device)
        return len(writes)

    def minibatch(self, rows: int, generator: torch.Generator | None, draw: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """min(rows, count) stored pairs drawn uniformly without replacement: (images, tokens). ``draw=False``
        takes the first ones instead (the same shapes and cost, and the generator is left alone)."""
        if draw:
            perm = torch.randperm(self.count, generator=generator, device=self.device)[:rows]
        else:
            perm = torch.arange(min(rows, self.count), device=self.device)
        return self.codec.decode(self.images.index_select(0, perm)), self.tokens.index_select(0, perm)

    def state_dict(self) -> dict[str, Any]:
        return {
            "images": self.images, "tokens": self.tokens, "labels": torch.from_numpy(self.labels.copy()),
            "classes": list(self.classes), "count": self.count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            load_rows(self.images, state["images"].to(self.device), "gdumb memory images")
            load_rows(self.tokens, state["tokens"].to(self.device), "gdumb memory tokens")
        self.labels = state["labels"].cpu().numpy().astype(np.int64).copy()
        self.classes = [str(c) for c in state["classes"]]
        self.count = int(state["count"])


@dataclass
class GdumbConfig:
    memory_size: int = field(default=500, metadata={"help": "samples the class-balanced memory holds"})
    fill_batch_size: int = field(default=64, metadata={"help": "batch size of the pass that fills the memory"})
    image_dtype: str = dtype_field()

    def __post_init__(self):
        check_positive("memory_size", self.memory_size, integer=True)
        check_positive("fill_batch_size", self.fill_batch_size, integer=True)
        check_choice("image_dtype", self.image_dtype, IMAGE_DTYPES)


@register_method("gdumb")
class Gdumb(BaseMethod):
    """GDumb (Prabhu et al. 2020): each task retrains from θ0 on a class-balanced memory only.

    The memory is filled greedily over the stream's concepts at each task start; the task's budgeted steps
    are the retrain, and the weights it learns are deployed.
    """

    Config = GdumbConfig
    owns_start_weights = "GDumb retrains every task from θ0"

    def __init__(self, clip: Clip, config: GdumbConfig):
        super().__init__(clip, config)
        self.memory = BalancedMemory(clip, config.memory_size, config.image_dtype)
        # θ0 on the host (read once per task): rebuilt from the base model on resume, never saved.
        self._base = {
            k: v.detach().clone() if v.device.type == "meta" else v.detach().to("cpu", copy=True)
            for k, v in clip.model.state_dict().items()
        }
        self._restart = False
        self.generator = seeded_generator(clip.device, 0, "gdumb")
        self._warned = False

    def begin_task(self, task: TaskInfo) -> None:
        """Greedily add the task's samples to the memory; restart from θ0 (see :meth:`training_weights`)."""

        self.generator = seeded_generator(self.memory.device, task.seed, "gdumb", task.index)
        self._restart = True
        if task.data is None:
            log.warning("gdumb: task %d came without its data (TaskInfo.data); the memory is not updated", task.index)
            return
        rng = rng_for(task.seed, "gdumb-memory", task.index)
        for batch in task.data.batches(self.config.fill_batch_size):
            self.memory.add(batch, self._keys(task, batch), rng)

    def _keys(self, task: TaskInfo, batch: Batch) -> list[str]:
        """The class of each row: its concept; rows without one count as one class per task."""
        if batch.labels is None and not self._warned:
            log.warning("gdumb: task data without labels; each task's samples count as one class")
            self._warned = True
        labels = [-1] * len(batch) if batch.labels is None else batch.labels.tolist()  # host read: a task hook
        return [task.concepts[c] if 0 <= c < len(task.concepts) else f"task {task.index}" for c in labels]

    def training_weights(self) -> dict[str, torch.Tensor] | None:
        """θ0 once per task (GDumb retrains from scratch); None otherwise."""
        if not self._restart:
            return None
        self._restart = False
        return self._base

    def loss(self, batch: Batch, model: nn.Module) -> LossOutput:
        """The CLIP loss on a minibatch of the memory (the batch itself only while the memory is empty)."""
        device = batch.images.device
        if self.memory.count == 0:  # no task data yet (`fif budget`, unit tests): same cost, the batch's pairs
            img, txt, scale = clip_features(model, batch)
        else:
            # On the meta device (the budget's FLOP count) the draw is skipped: measuring a step must not
            # advance the generator the next real step draws from.
            images, tokens = self.memory.minibatch(len(batch), self.generator, draw=device.type != "meta")
            images, tokens = stand_in(images, device), stand_in(tokens, device)
            img, txt = model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True)
            scale = model.logit_scale.exp()
        loss = self.clip_loss(img, txt, scale)
        return LossOutput(loss, {"clip": loss.detach()})

    def state_dict(self) -> dict[str, Any]:
        return {
            "memory": self.memory.state_dict(),
            "generator": None if self.generator is None else self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"memory", "generator"}:
            raise ValueError(f"method 'gdumb': checkpoint state must hold 'memory' and 'generator', got {sorted(state)}")
        self.memory.load_state_dict(state["memory"])
        if state["generator"] is not None and self.generator is not None:
            self.generator.set_state(state["generator"].cpu())
