"""The mixed training batch every method and the training loop share, and a synthetic batch with real
shapes (for counting a step's FLOPs and memory without data)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from fif.model.clip import Clip


@dataclass
class Batch:
    """One mixed training batch, already on the device.

    Attributes:
        images: normalised images (B, 3, S, S).
        tokens: token ids (B, context_length).
        source: (B,) int8 — 0 pretraining pool, 1 current task, 2 buffer of past tasks.
        labels: (B,) int64 class of each sample as an index into ``TaskInfo.concepts`` (−1: none), set
            only in passes over a task's own data (``TaskData.batches``, e.g. GDumb's class-balanced
            memory); None in training batches.
        bad: (source, file) of each unreadable sample found while building this batch (each was
            replaced by a readable one; see :mod:`fif.data.bad_samples`). Built in DataLoader workers
            too, so the run learns of them from the batch; empty almost always.
    """

    images: torch.Tensor
    tokens: torch.Tensor
    source: torch.Tensor
    labels: torch.Tensor | None = None
    bad: tuple[tuple[str, str], ...] = ()

    PRETRAINING: ClassVar[int] = 0
    UPDATE: ClassVar[int] = 1
    BUFFER: ClassVar[int] = 2

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def pin_memory(self) -> "Batch":
        """A copy in page-locked memory, for asynchronous copies to a GPU (a DataLoader with
        ``pin_memory=True`` calls this on every batch its workers return)."""
        return dataclasses.replace(
            self, images=self.images.pin_memory(), tokens=self.tokens.pin_memory(), source=self.source.pin_memory(),
            labels=None if self.labels is None else self.labels.pin_memory(),
        )

    def split(self, parts: int) -> list["Batch"]:
        """Micro-batches for gradient accumulation."""
        size = -(-len(self) // parts)
        return [
            Batch(
                self.images[i : i + size], self.tokens[i : i + size], self.source[i : i + size],
                None if self.labels is None else self.labels[i : i + size],
            )
            for i in range(0, len(self), size)
        ]


def synthetic_batch(clip: Clip, batch_size: int, device: torch.device | str) -> Batch:
    """A batch with the shapes of real data: random images of ``clip.image_size`` and tokenized captions.

    The tokens come from the model's own tokenizer, so their length is the model's context length.
    """
    device = torch.device(device)
    size = clip.image_size
    # Words every tokenizer knows, the tiny models' compact vocabulary included (the text does not change a count).
    tokens = clip.tokenize(["a photo of a shape"]).to(device).expand(batch_size, -1).contiguous()
    if device.type == "meta":
        images = torch.empty(batch_size, 3, size, size, device=device)
    else:
        gen = torch.Generator(device=device).manual_seed(0)
        images = torch.randn(batch_size, 3, size, size, device=device, generator=gen)
    source = torch.full((batch_size,), Batch.UPDATE, dtype=torch.int8, device=device)
    return Batch(images=images, tokens=tokens, source=source)
