"""ER, DER and DER++: the CLIP loss plus a replay minibatch from a reservoir of the update stream.
See :mod:`fif.methods.replay`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fif.data.batch import Batch
from fif.methods.base import BaseMethod, LossOutput, TaskInfo
from fif.methods.common import check_choice, check_positive
from fif.methods.registry import register_method
from fif.methods.replay.buffers import (
    ReplayCore,
    check_buffer_options,
    dtype_field,
    embedding_mse,
    masked_clip_loss,
    replay_field,
    size_field,
)
from fif.model.clip import Clip
from fif.model.loss import ClipLoss, clip_features

# ----------------------------------------------------------------------------------------------
# ER


@dataclass
class ErConfig:
    buffer_size: int = size_field()
    replay_batch_size: int = replay_field()
    image_dtype: str = dtype_field()
    combine: str = field(
        default="concat",
        metadata={"help": "concat = one CLIP loss over batch + replay (replayed pairs are negatives too); "
                  "add = CLIP(batch) + CLIP(replay)"},
    )

    def __post_init__(self):
        check_buffer_options(self)
        check_choice("combine", self.combine, ("concat", "add"))


def er_loss(core: ReplayCore, batch: Batch, model: nn.Module, combine: str, clip_loss: ClipLoss) -> LossOutput:
    """CLIP loss over the batch plus a replay minibatch: one loss over both (concat) or CLIP + CLIP (add)."""
    img, txt, scale = clip_features(model, batch)
    rep = core.replay(model, batch, img.shape[-1])
    ls = clip_loss.label_smoothing
    if combine == "concat":
        valid = torch.cat([torch.ones(len(batch), dtype=torch.bool, device=rep.valid.device), rep.valid])
        loss = masked_clip_loss(torch.cat([img, rep.image]), torch.cat([txt, rep.text]), scale, valid, ls)
        return LossOutput(loss, {"clip": loss.detach()})
    clip = clip_loss(img, txt, scale)
    replay = masked_clip_loss(rep.image, rep.text, scale, rep.valid, ls)
    return LossOutput(clip + replay, {"clip": clip.detach(), "replay": replay.detach()})


# ----------------------------------------------------------------------------------------------
# DER, DER++


@dataclass
class DerConfig:
    buffer_size: int = size_field()
    replay_batch_size: int = replay_field()
    image_dtype: str = dtype_field()
    alpha: float = field(default=1.0, metadata={"help": "α of the embedding term α·‖f(x) − z‖² (needs tuning)"})

    def __post_init__(self):
        check_buffer_options(self)
        check_positive("alpha", self.alpha)


@dataclass
class DerppConfig(DerConfig):
    beta: float = field(default=0.5, metadata={"help": "β of the CLIP loss on the replayed pairs"})

    def __post_init__(self):
        super().__post_init__()
        check_positive("beta", self.beta)


def der_loss(
    core: ReplayCore, batch: Batch, model: nn.Module, alpha: float, beta: float, clip_loss: ClipLoss
) -> LossOutput:
    """CLIP(batch) + α·‖f(x_buf) − z_buf‖² (+ β·CLIP(buffer pairs) when β > 0), one replay minibatch."""
    img, txt, scale = clip_features(model, batch)
    clip = clip_loss(img, txt, scale)
    core.remember(batch, img, txt)
    rep = core.replay(model, batch, img.shape[-1])
    mse = embedding_mse(rep.image, rep.text, rep.stored_image, rep.stored_text, rep.valid)
    total, parts = clip + alpha * mse, {"clip": clip.detach(), "embedding_mse": mse.detach()}
    if beta > 0:
        replay = masked_clip_loss(rep.image, rep.text, scale, rep.valid, clip_loss.label_smoothing)
        total, parts["replay"] = total + beta * replay, replay.detach()
    return LossOutput(total, parts)


# ----------------------------------------------------------------------------------------------
# The methods: each is its loss over one ReplayCore (the reservoir and its hooks)


class ReservoirMethod(BaseMethod):
    """A replay method over one :class:`ReplayCore`: the reservoir is filled in ``after_step`` (device ops
    only; with each pair's embeddings from this step's loss when ``embeddings``), reseeded per task, and is
    the method's checkpoint state. A subclass gives its ``loss``."""

    embeddings = False  # store each pair's image/text embeddings with it (DER's target)

    def __init__(self, clip: Clip, config: ErConfig | DerConfig):
        super().__init__(clip, config)
        self.core = ReplayCore(clip, config.buffer_size, config.replay_batch_size, config.image_dtype,
                               embeddings=self.embeddings)

    def begin_task(self, task: TaskInfo) -> None:
        self.core.buffer.begin_task(task.seed, task.index)

    def after_step(self, batch: Batch, step: int) -> None:
        """Offer the batch's update pairs to the reservoir (device ops only)."""
        self.core.after_step(batch)

    def state_dict(self) -> dict[str, Any]:
        return self.core.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.core.load_state_dict(state, self.name)


@register_method("er")
class Er(ReservoirMethod):
    """ER (Chaudhry et al. 2019): CLIP loss over the batch plus a replay minibatch from a reservoir.

    The reservoir holds ``buffer_size`` update pairs (Algorithm R, filled on the device in ``after_step``);
    the replayed pairs are scored at the model's own temperature.
    """

    Config = ErConfig

    def loss(self, batch: Batch, model: nn.Module) -> LossOutput:
        return er_loss(self.core, batch, model, self.config.combine, self.clip_loss)


@register_method("der")
class Der(ReservoirMethod):
    """DER (Buzzega et al. 2020): CLIP loss + α·‖f(x) − z‖² to the embeddings stored with replayed pairs.

    The reservoir stores each pair's image and text embeddings from the step that inserted it.
    """

    Config = DerConfig
    embeddings = True

    def loss(self, batch: Batch, model: nn.Module) -> LossOutput:
        return der_loss(self.core, batch, model, self.config.alpha, 0.0, self.clip_loss)


@register_method("derpp")
class Derpp(ReservoirMethod):
    """DER++ (Buzzega et al. 2020): DER plus β·CLIP loss on the replayed pairs (one replay minibatch)."""

    Config = DerppConfig
    embeddings = True

    def loss(self, batch: Batch, model: nn.Module) -> LossOutput:
        return der_loss(self.core, batch, model, self.config.alpha, self.config.beta, self.clip_loss)
