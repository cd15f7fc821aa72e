"""Replay: ER, DER, DER++ and GDumb learn from a small memory of earlier samples.

- **ER** (experience replay; Chaudhry et al. 2019): a reservoir of ``buffer_size`` image–text pairs of the
  update data seen so far (Vitter's algorithm R, so it is a uniform sample of the stream); each step adds
  a replay minibatch to the CLIP loss, at the model's own temperature (concatenated to the batch, or as a
  second CLIP loss).
- **DER** (Buzzega et al. 2020): the reservoir also stores the model's image and text embeddings at
  insertion; each step adds α · mean ‖f(x) − z‖² over replayed samples (dark knowledge: the past
  function, not only the past labels).
- **DER++**: DER plus β · the CLIP loss on the replayed pairs.
- **GDumb** (Prabhu et al. 2020): a class-balanced greedy memory over the task's concepts; at each task
  the model restarts from the base weights θ0 and trains on the memory only. Its training steps are the
  retrain (charged to the budget as steps); the weights they learn are deployed, never dropped.

The buffers are method state on the model's device: images (uint8 or fp16), tokens and embeddings of a
fixed number of rows, saved by :meth:`state_dict` for exact resume. The reservoir's insertions run in
``after_step`` as device ops only (a device-side counter of the samples seen, random numbers from a
device generator seeded from the run seed and task, a write-sink row for samples not kept): no host sync.
See docs/methods-distillation-replay.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fif.methods.base import (
    Batch,
    LossOutput,
    TaskInfo,
    UpdateMethod,
    clip_contrastive_loss,
    clip_features,
    register_method,
)
from fif.model.clip import Clip

log = logging.getLogger(__name__)

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


def _stand_in(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t``, or an empty meta tensor of its shape when the step runs on the meta device."""
    return torch.empty_like(t, device="meta") if device.type == "meta" and t.device.type != "meta" else t


def _seeded_generator(device: torch.device, seed: int, *purpose: int | str) -> torch.Generator | None:
    """A generator on ``device`` seeded from (run seed, purpose...); None on the meta device."""
    if device.type == "meta":
        return None
    from fif.data.stream import rng_for

    return torch.Generator(device=device).manual_seed(int(rng_for(seed, *purpose).integers(2**62)))


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


def _check_positive(name: str, value: float, integer: bool = False) -> None:
    if integer and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError(f"method.{name} must be an integer, got {value!r}")
    if not value > 0:
        raise ValueError(f"method.{name} must be > 0, got {value!r}")


def _check_non_negative(name: str, value: float, integer: bool = False) -> None:
    if integer and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError(f"method.{name} must be an integer, got {value!r}")
    if not value >= 0:
        raise ValueError(f"method.{name} must be >= 0, got {value!r}")


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"method.{name} must be one of {', '.join(choices)}; got {value!r}")


def _load_rows(target: torch.Tensor, saved: torch.Tensor, what: str) -> None:
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
        self.generator = _seeded_generator(device, 0, "reservoir")
        self._meta: Reservoir | None = None

    def begin_task(self, seed: int, task: int) -> None:
        """Reseed the draws (insertions and replay minibatches) from the run seed and the task."""
        self.generator = _seeded_generator(self.device, seed, "reservoir", task)

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
            twin.images, twin.tokens, twin.seen = (_stand_in(t, device) for t in (self.images, self.tokens, self.seen))
            twin.embeddings = {k: _stand_in(v, device) for k, v in self.embeddings.items()}
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
            _load_rows(self.images[:n], state["images"].to(self.device), f"{method} buffer images")
            _load_rows(self.tokens[:n], state["tokens"].to(self.device), f"{method} buffer tokens")
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


def _size_field(default: int = 500):
    return field(default=default, metadata={"help": "pairs the reservoir holds (ER/DER: 500)"})


def _replay_field():
    return field(default=0, metadata={"help": "replayed pairs per step (0 = as many as the batch)"})


def _dtype_field():
    return field(default="uint8", metadata={"help": "stored image dtype: uint8 (pixels) or float16 (model input)"})


def _check_buffer(cfg) -> None:
    _check_positive("buffer_size", cfg.buffer_size, integer=True)
    _check_non_negative("replay_batch_size", cfg.replay_batch_size, integer=True)
    _check_choice("image_dtype", cfg.image_dtype, IMAGE_DTYPES)


# ----------------------------------------------------------------------------------------------
# ER


@dataclass
class ErConfig:
    buffer_size: int = _size_field()
    replay_batch_size: int = _replay_field()
    image_dtype: str = _dtype_field()
    combine: str = field(
        default="concat",
        metadata={"help": "concat = one CLIP loss over batch + replay (replayed pairs are negatives too); "
                  "add = CLIP(batch) + CLIP(replay)"},
    )

    def __post_init__(self):
        _check_buffer(self)
        _check_choice("combine", self.combine, ("concat", "add"))


@register_method("er")
class Er(UpdateMethod):
    """ER (Chaudhry et al. 2019): a reservoir of ``buffer_size`` update pairs; each step adds a replay
    minibatch to the CLIP loss at the model's own temperature."""

    Config = ErConfig

    def __init__(self, clip: Clip, config: ErConfig, label_smoothing: float = 0.0):
        super().__init__(clip, config, label_smoothing)
        self.core = ReplayCore(clip, config.buffer_size, config.replay_batch_size, config.image_dtype, embeddings=False)

    def loss(self, batch: Batch, model: nn.Module) -> LossOutput:
        img, txt, scale = clip_features(model, batch)
        rep = self.core.replay(model, batch, img.shape[-1])
        ls = self.label_smoothing
        if self.config.combine == "concat":
            valid = torch.cat([torch.ones(len(batch), dtype=torch.bool, device=rep.valid.device), rep.valid])
            loss = masked_clip_loss(torch.cat([img, rep.image]), torch.cat([txt, rep.text]), scale, valid, ls)
            return LossOutput(loss, {"clip": loss.detach()})
        clip = clip_contrastive_loss(img, txt, scale, ls)
        replay = masked_clip_loss(rep.image, rep.text, scale, rep.valid, ls)
        return LossOutput(clip + replay, {"clip": clip.detach(), "replay": replay.detach()})

    def begin_task(self, task: TaskInfo) -> None:
        self.core.buffer.begin_task(task.seed, task.index)

    def after_step(self, batch: Batch, step: int) -> None:
        """Offer the batch's update pairs to the reservoir (device ops only)."""
        self.core.after_step(batch)

    def state_dict(self) -> dict[str, Any]:
        return self.core.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.core.load_state_dict(state, self.name)


# ----------------------------------------------------------------------------------------------
# DER, DER++


@dataclass
class DerConfig:
    buffer_size: int = _size_field()
    replay_batch_size: int = _replay_field()
    image_dtype: str = _dtype_field()
    alpha: float = field(default=1.0, metadata={"help": "α of the embedding term α·‖f(x) − z‖² (needs tuning)"})

    def __post_init__(self):
        _check_buffer(self)
        _check_positive("alpha", self.alpha)


@dataclass
class DerppConfig(DerConfig):
    beta: float = field(default=0.5, metadata={"help": "β of the CLIP loss on the replayed pairs"})

    def __post_init__(self):
        super().__post_init__()
        _check_positive("beta", self.beta)


def der_loss(core: ReplayCore, batch: Batch, model: nn.Module, alpha: float, beta: float, ls: float) -> LossOutput:
    """CLIP(batch) + α·‖f(x_buf) − z_buf‖² (+ β·CLIP(buffer pairs) when β > 0), one replay minibatch."""
    img, txt, scale = clip_features(model, batch)
    clip = clip_contrastive_loss(img, txt, scale, ls)
    core.remember(batch, img, txt)
    rep = core.replay(model, batch, img.shape[-1])
    mse = embedding_mse(rep.image, rep.text, rep.stored_image, rep.stored_text, rep.valid)
    total, parts = clip + alpha * mse, {"clip": clip.detach(), "embedding_mse": mse.detach()}
    if beta > 0:
        replay = masked_clip_loss(rep.image, rep.text, scale, rep.valid, ls)
        total, parts["replay"] = total + beta * replay, replay.detach()
    return LossOutput(total, parts)


@register_method("der")
class Der(UpdateMethod):
    """DER (Buzzega et al. 2020): a reservoir that also stores the model's embeddings at insertion; CLIP
    loss + α·mean ‖f(x) − z‖² over a replay minibatch."""

    Config = DerConfig

    def __init__(self, clip: Clip, config: DerConfig, label_smoothing: float = 0.0):
        super().__init__(clip, config, label_smoothing)
        self.core = ReplayCore(clip, config.buffer_size, config.replay_batch_size, config.image_dtype, embeddings=True)

    def loss(self, batch: Batch, model: nn.Module) -> LossOutput:
        return der_loss(self.core, batch, model, self.config.alpha, 0.0, self.label_smoothing)

    def begin_task(self, task: TaskInfo) -> None:
        self.core.buffer.begin_task(task.seed, task.index)

    def after_step(self, batch: Batch, step: int) -> None:
        """Store the batch's update pairs with their embeddings from this step's loss (device ops only)."""
        self.core.after_step(batch)

    def state_dict(self) -> dict[str, Any]:
        return self.core.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.core.load_state_dict(state, self.name)


@register_method("derpp")
class Derpp(UpdateMethod):
    """DER++ (Buzzega et al. 2020): DER plus β·the CLIP loss on the replayed pairs (same minibatch)."""

    Config = DerppConfig

    def __init__(self, clip: Clip, config: DerppConfig, label_smoothing: float = 0.0):
        super().__init__(clip, config, label_smoothing)
        self.core = ReplayCore(clip, config.buffer_size, config.replay_batch_size, config.image_dtype, embeddings=True)

    def loss(self, batch: Batch, model: nn.Module) -> LossOutput:
        return der_loss(self.core, batch, model, self.config.alpha, self.config.beta, self.label_smoothing)

    def begin_task(self, task: TaskInfo) -> None:
        self.core.buffer.begin_task(task.seed, task.index)

    def after_step(self, batch: Batch, step: int) -> None:
        """Store the batch's update pairs with their embeddings from this step's loss (device ops only)."""
        self.core.after_step(batch)

    def state_dict(self) -> dict[str, Any]:
        return self.core.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.core.load_state_dict(state, self.name)


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

    def minibatch(self, rows: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """min(rows, count) stored pairs drawn uniformly without replacement: (images, tokens)."""
        perm = torch.randperm(self.count, generator=generator, device=self.device)[:rows]
        return self.codec.decode(self.images.index_select(0, perm)), self.tokens.index_select(0, perm)

    def state_dict(self) -> dict[str, Any]:
        return {
            "images": self.images, "tokens": self.tokens, "labels": torch.from_numpy(self.labels.copy()),
            "classes": list(self.classes), "count": self.count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            _load_rows(self.images, state["images"].to(self.device), "gdumb memory images")
            _load_rows(self.tokens, state["tokens"].to(self.device), "gdumb memory tokens")
        self.labels = state["labels"].cpu().numpy().astype(np.int64).copy()
        self.classes = [str(c) for c in state["classes"]]
        self.count = int(state["count"])


@dataclass
class GdumbConfig:
    memory_size: int = field(default=500, metadata={"help": "samples the class-balanced memory holds"})
    fill_batch_size: int = field(default=64, metadata={"help": "batch size of the pass that fills the memory"})
    image_dtype: str = _dtype_field()

    def __post_init__(self):
        _check_positive("memory_size", self.memory_size, integer=True)
        _check_positive("fill_batch_size", self.fill_batch_size, integer=True)
        _check_choice("image_dtype", self.image_dtype, IMAGE_DTYPES)


@register_method("gdumb")
class Gdumb(UpdateMethod):
    """GDumb (Prabhu et al. 2020): a greedy class-balanced memory over the stream's concepts; every task
    restarts from the base weights θ0 and spends its steps on the memory only (the retrain is the task's
    budgeted steps); the learned weights are deployed."""

    Config = GdumbConfig

    def __init__(self, clip: Clip, config: GdumbConfig, label_smoothing: float = 0.0):
        super().__init__(clip, config, label_smoothing)
        self.memory = BalancedMemory(clip, config.memory_size, config.image_dtype)
        # θ0 on the host (read once per task): rebuilt from the base model on resume, never saved.
        self._base = {
            k: v.detach().clone() if v.device.type == "meta" else v.detach().to("cpu", copy=True)
            for k, v in clip.model.state_dict().items()
        }
        self._restart = False
        self.generator = _seeded_generator(clip.device, 0, "gdumb")
        self._warned = False

    def begin_task(self, task: TaskInfo) -> None:
        """Greedily add the task's samples to the memory; restart from θ0 (see :meth:`training_weights`)."""
        from fif.data.stream import rng_for

        self.generator = _seeded_generator(self.memory.device, task.seed, "gdumb", task.index)
        self._restart = True
        if task.batches is None:
            log.warning("gdumb: task %d came without its data (TaskInfo.batches); the memory is not updated", task.index)
            return
        rng = rng_for(task.seed, "gdumb-memory", task.index)
        for batch in task.batches(self.config.fill_batch_size):
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
            images, tokens = self.memory.minibatch(len(batch), self.generator)
            images, tokens = _stand_in(images, device), _stand_in(tokens, device)
            img, txt = model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True)
            scale = model.logit_scale.exp()
        loss = clip_contrastive_loss(img, txt, scale, self.label_smoothing)
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
