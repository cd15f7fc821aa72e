"""The replay family's buffers and the math they share: a device-side reservoir (ER, DER, DER++), the
stored-image codec, masked CLIP loss and DER's embedding term. See :mod:`fif.methods.replay`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fif.core.seeding import seeded_generator
from fif.data.batch import Batch
from fif.methods.common import check_choice, check_non_negative, check_positive, stand_in
from fif.model.clip import Clip
from fif.model.loss import clip_features

IMAGE_DTYPES = {"uint8": torch.uint8, "float16": torch.float16}
_MASKED = -1e9  # logit of a left-out column: exp underflows to exactly 0


# ----------------------------------------------------------------------------------------------
# The math


def _smoothed_nll(logits: torch.Tensor, valid_cols: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Per-row cross-entropy with the target on the diagonal, smoothing spread over the valid columns."""
    logp = F.log_softmax(logits, dim=-1)
    nll = -logp.diagonal()
    if not label_smoothing:
        return nll
    cols = valid_cols.to(logp.dtype)
    smooth = -(logp * cols[None, :]).sum(-1) / cols.sum().clamp_min(1.0)
    return (1.0 - label_smoothing) * nll + label_smoothing * smooth


def masked_clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    valid: torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over the rows where ``valid`` (others are neither anchors nor negatives).

    Equals :func:`fif.methods.base.clip_contrastive_loss` when every row is valid (label smoothing
    included); 0 when none is. Static shapes, no host sync: a replay minibatch drawn from a buffer that
    holds fewer samples than it has rows masks the empty ones.
    """
    logits = (logit_scale * image_features @ text_features.t()).float()
    out = torch.where(valid, 0.0, _MASKED)[None, :]
    rows = _smoothed_nll(logits + out, valid, label_smoothing) + _smoothed_nll(logits.t() + out, valid, label_smoothing)
    w = valid.to(rows.dtype)
    return 0.5 * (rows * w).sum() / w.sum().clamp_min(1.0)


def embedding_mse(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    stored_image: torch.Tensor,
    stored_text: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """DER's term for CLIP: mean over valid rows of ‖f_img − z_img‖² + ‖f_txt − z_txt‖² (0 when none is)."""
    per_row = (image_features.float() - stored_image.float()).square().sum(-1)
    per_row = per_row + (text_features.float() - stored_text.float()).square().sum(-1)
    w = valid.to(per_row.dtype)
    return (per_row * w).sum() / w.sum().clamp_min(1.0)


def sample_slots(
    capacity: int, count: torch.Tensor, rows: int, generator: torch.Generator | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` buffer slots drawn uniformly without replacement among the ``count`` filled ones.

    ``count`` is a device tensor; shapes do not depend on it (no sync): empty slots sort after every
    filled one and come back marked invalid, as do rows beyond ``capacity``.

    Returns:
        (slot indices (rows,), valid (rows,) bool).
    """
    arange = torch.arange(capacity, device=device)
    scores = torch.rand(capacity, generator=generator, device=device)
    scores = torch.where(arange < count, scores, 2.0 + arange / capacity)  # empty slots last, in a fixed order
    k = min(rows, capacity)
    slots = scores.topk(k, largest=False).indices
    valid = slots < count
    if rows > k:
        slots = torch.cat([slots, slots.new_zeros(rows - k)])
        valid = torch.cat([valid, valid.new_zeros(rows - k)])
    return slots, valid


def reservoir_slots(
    seen: torch.Tensor, take: torch.Tensor, uniform: torch.Tensor, capacity: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm R (Vitter 1985) for a batch of candidates, in batch order, as device ops.

    The i-th candidate (``take``) overall, n = seen + (its rank in the batch), goes to slot n while
    n < capacity, else to slot ⌊u·(n+1)⌋ if that is < capacity (probability capacity/(n+1)), replacing
    what was there. A later candidate of the same batch that lands on the same slot wins, as in the
    sequential algorithm; rows that store nothing are sent to the sink slot ``capacity``.

    Returns:
        (destination slot per row, in [0, capacity], with ``capacity`` = not stored; candidates in the batch).
    """
    rank = torch.cumsum(take.long(), 0) - 1
    n = seen + rank
    drawn = torch.minimum((uniform * (n + 1).to(uniform.dtype)).long(), n)
    slot = torch.where(n < capacity, n, drawn)
    keep = take & (slot < capacity)
    rows = take.shape[0]
    later = torch.ones(rows, rows, dtype=torch.bool, device=take.device).triu(1)  # [i, j]: j comes after i
    overwritten = ((slot[:, None] == slot[None, :]) & keep[None, :] & later).any(1)
    dest = torch.where(keep & ~overwritten, slot, torch.full_like(slot, capacity))
    return dest, take.long().sum()


# ----------------------------------------------------------------------------------------------
# Stored images


class ImageCodec:
    """Model-input images ↔ stored rows: uint8 pixels (¼ of fp32; rounding error ≤ 0.5/255 of the
    [0, 1] range) or fp16 copies of the normalised input."""

    def __init__(self, clip: Clip, dtype: str):
        self.dtype = IMAGE_DTYPES[dtype]
        device = clip.device
        self.mean = torch.tensor(clip.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(clip.std, device=device).view(1, 3, 1, 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.dtype == torch.float16:
            return images.to(torch.float16)
        pixels = images.float() * self.std.to(images.device) + self.mean.to(images.device)
        return pixels.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)

    def decode(self, stored: torch.Tensor) -> torch.Tensor:
        if self.dtype == torch.float16:
            return stored.float()
        return (stored.float() / 255.0 - self.mean.to(stored.device)) / self.std.to(stored.device)


def load_rows(target: torch.Tensor, saved: torch.Tensor, what: str) -> None:
    if tuple(saved.shape) != tuple(target.shape) or saved.dtype != target.dtype:
        raise ValueError(
            f"{what}: the checkpoint holds {tuple(saved.shape)} {saved.dtype}, the method {tuple(target.shape)} "
            f"{target.dtype}; resume with the same model and buffer options"
        )
    target.copy_(saved)


# ----------------------------------------------------------------------------------------------
# The reservoir (ER, DER, DER++)


@dataclass
class Replayed:
    """A replay minibatch's current features (with gradients), stored embeddings and valid rows."""

    image: torch.Tensor
    text: torch.Tensor
    valid: torch.Tensor
    stored_image: torch.Tensor | None = None
    stored_text: torch.Tensor | None = None


class Reservoir:
    """A reservoir sample of the update pairs seen so far, on the model's device, bounded in size.

    Rows 0..size−1 hold samples (filled in order, then replaced at random); row ``size`` of every tensor
    is a write sink for rows that are not kept, so a batch is stored with one ``index_copy_`` per tensor
    and no host sync. ``seen`` counts the update samples offered (a device tensor).
    """

    def __init__(self, clip: Clip, size: int, image_dtype: str, embeddings: bool):
        device = clip.device
        self.size, self.codec, self.device = size, ImageCodec(clip, image_dtype), device
        context_length = int(clip.tokenize([""]).shape[-1])
        s = clip.image_size
        self.images = torch.zeros(size + 1, 3, s, s, dtype=self.codec.dtype, device=device)
        self.tokens = torch.zeros(size + 1, context_length, dtype=torch.long, device=device)
        self.seen = torch.zeros((), dtype=torch.long, device=device)
        self.with_embeddings = embeddings
        self.embeddings: dict[str, torch.Tensor] = {}  # "image"/"text" → (size + 1, D) fp32, at first use
        self.generator = seeded_generator(device, 0, "reservoir")
        self._meta: Reservoir | None = None

    def begin_task(self, seed: int, task: int) -> None:
        """Reseed the draws (insertions and replay minibatches) from the run seed and the task."""
        self.generator = seeded_generator(self.device, seed, "reservoir", task)

    def count(self) -> torch.Tensor:
        """Samples held (device tensor)."""
        return self.seen.clamp(max=self.size)

    def _embedding_rows(self, name: str, dim: int) -> torch.Tensor:
        if name not in self.embeddings:
            self.embeddings[name] = torch.zeros(self.size + 1, dim, device=self.device)
        return self.embeddings[name]

    def insert(self, batch: Batch, features: dict[str, torch.Tensor] | None = None) -> None:
        """Offer the batch's update rows (``source == 1``) to the reservoir; device ops only."""
        with torch.no_grad():
            take = batch.source == Batch.UPDATE
            uniform = torch.rand(len(batch), generator=self.generator, device=self.device, dtype=torch.float64)
            dest, offered = reservoir_slots(self.seen, take, uniform, self.size)
            self.images.index_copy_(0, dest, self.codec.encode(batch.images))
            self.tokens.index_copy_(0, dest, batch.tokens.long())
            for name, f in (features or {}).items():
                self._embedding_rows(name, f.shape[-1]).index_copy_(0, dest, f.float())
            self.seen += offered

    def on(self, device: torch.device) -> "Reservoir":
        """This reservoir, or on the meta device (the budget's FLOP count) a weightless twin."""
        if device.type != "meta" or self.device.type == "meta":
            return self
        if self._meta is None:
            twin = object.__new__(Reservoir)
            twin.__dict__.update(self.__dict__)
            twin.images, twin.tokens, twin.seen = (stand_in(t, device) for t in (self.images, self.tokens, self.seen))
            twin.embeddings = {k: stand_in(v, device) for k, v in self.embeddings.items()}
            twin.device, twin.generator, twin._meta = device, None, None
            self._meta = twin
        return self._meta

    def replay(self, model: nn.Module, rows: int, dim: int) -> Replayed:
        """Encode ``rows`` stored pairs drawn uniformly without replacement (with gradients)."""
        slots, valid = sample_slots(self.size, self.count(), rows, self.generator, self.device)
        images = self.codec.decode(self.images.index_select(0, slots))
        out = Replayed(
            model.encode_image(images, normalize=True),
            model.encode_text(self.tokens.index_select(0, slots), normalize=True),
            valid,
        )
        if self.with_embeddings:
            out.stored_image = self._embedding_rows("image", dim).index_select(0, slots)
            out.stored_text = self._embedding_rows("text", dim).index_select(0, slots)
        return out

    def state_dict(self) -> dict[str, Any]:
        n = self.size
        return {
            "images": self.images[:n],
            "tokens": self.tokens[:n],
            "seen": self.seen,
            "embeddings": {k: v[:n] for k, v in self.embeddings.items()},
            "generator": None if self.generator is None else self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any], method: str) -> None:
        keys = {"images", "tokens", "seen", "embeddings", "generator"}
        if set(state) != keys:
            raise ValueError(f"method {method!r}: checkpoint buffer state must hold {sorted(keys)}, got {sorted(state)}")
        n = self.size
        with torch.no_grad():
            load_rows(self.images[:n], state["images"].to(self.device), f"{method} buffer images")
            load_rows(self.tokens[:n], state["tokens"].to(self.device), f"{method} buffer tokens")
            self.seen.copy_(state["seen"].to(self.device))
            for name, rows in state["embeddings"].items():
                self._embedding_rows(name, rows.shape[-1])[:n].copy_(rows.to(self.device))
        if state["generator"] is not None and self.generator is not None:
            self.generator.set_state(state["generator"].cpu())


class ReplayCore:
    """What ER, DER and DER++ share: the reservoir, the replay minibatch, and (DER) the embeddings of the
    step's batch, kept from :meth:`remember` (inside ``loss``, before the optimizer step: the model "at
    insertion") until ``after_step`` stores them."""

    def __init__(self, clip: Clip, size: int, replay_batch_size: int, image_dtype: str, embeddings: bool):
        self.clip, self.replay_batch_size = clip, replay_batch_size
        self.buffer = Reservoir(clip, size, image_dtype, embeddings)
        self._pending: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None

    def remember(self, batch: Batch, image: torch.Tensor, text: torch.Tensor) -> None:
        if self.buffer.with_embeddings:
            self._pending = (batch.images, {"image": image.detach(), "text": text.detach()})

    def replay(self, model: nn.Module, batch: Batch, dim: int) -> Replayed:
        rows = self.replay_batch_size or len(batch)
        return self.buffer.on(batch.images.device).replay(model, rows, dim)

    def after_step(self, batch: Batch) -> None:
        features = None
        if self.buffer.with_embeddings:
            if self._pending is not None and self._pending[0] is batch.images:
                features = self._pending[1]
            else:  # no loss ran on this batch (not in the runner): embed it now, in eval mode
                features = self._embed(batch)
        self._pending = None
        self.buffer.insert(batch, features)

    def _embed(self, batch: Batch) -> dict[str, torch.Tensor]:
        model = self.clip.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                img, txt, _ = clip_features(model, batch)
        finally:
            model.train(was_training)
        return {"image": img, "text": txt}

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict[str, Any], method: str) -> None:
        if set(state) != {"buffer"}:
            raise ValueError(f"method {method!r}: checkpoint state must hold exactly 'buffer', got keys {sorted(state)}")
        self.buffer.load_state_dict(state["buffer"], method)


def size_field(default: int = 500):
    return field(default=default, metadata={"help": "pairs the reservoir holds (ER/DER: 500)"})


def replay_field():
    return field(default=0, metadata={"help": "replayed pairs per step (0 = as many as the batch)"})


def dtype_field():
    return field(default="uint8", metadata={"help": "stored image dtype: uint8 (pixels) or float16 (model input)"})


def check_buffer_options(cfg) -> None:
    check_positive("buffer_size", cfg.buffer_size, integer=True)
    check_non_negative("replay_batch_size", cfg.replay_batch_size, integer=True)
    check_choice("image_dtype", cfg.image_dtype, IMAGE_DTYPES)
