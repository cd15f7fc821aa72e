"""ER, DER and DER++: the CLIP loss plus a replay minibatch from a reservoir of the update stream.
See :mod:`fif.methods.replay`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from fif.data.batch import Batch
from fif.methods.base import LossOutput, TaskInfo, UpdateMethod, register_method
from fif.methods.common import check_choice, check_positive
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
from fif.model.loss import clip_contrastive_loss, clip_features

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


def er_loss(core: ReplayCore, batch: Batch, model: nn.Module, combine: str, ls: float) -> LossOutput:
    """CLIP loss over the batch plus a replay minibatch: one loss over both (concat) or CLIP + CLIP (add)."""
    img, txt, scale = clip_features(model, batch)
    rep = core.replay(model, batch, img.shape[-1])
    if combine == "concat":
        valid = torch.cat([torch.ones(len(batch), dtype=torch.bool, device=rep.valid.device), rep.valid])
        loss = masked_clip_loss(torch.cat([img, rep.image]), torch.cat([txt, rep.text]), scale, valid, ls)
        return LossOutput(loss, {"clip": loss.detach()})
    clip = clip_contrastive_loss(img, txt, scale, ls)
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


# ----------------------------------------------------------------------------------------------
# The methods: each is its loss over one ReplayCore


ReplayLoss = Callable[[ReplayCore, Batch, nn.Module, Any, float], LossOutput]  # (core, batch, model, config, ls)


def _reservoir_method(
    name: str, class_name: str, config_type: type, embeddings: bool, loss: ReplayLoss, doc: str
) -> type[UpdateMethod]:
    """Register as ``name`` an UpdateMethod that adds ``loss`` over a reservoir of the update stream.

    ER, DER and DER++ differ only in their loss and whether the reservoir stores embeddings, so their one
    class is written here once (the UpdateMethod contract keeps inheritance one level deep: no shared base).
    """

    class ReservoirMethod(UpdateMethod):
        Config = config_type

        def __init__(self, clip: Clip, config: Any, label_smoothing: float = 0.0):
            super().__init__(clip, config, label_smoothing)
            self.core = ReplayCore(clip, config.buffer_size, config.replay_batch_size, config.image_dtype, embeddings)

        def loss(self, batch: Batch, model: nn.Module) -> LossOutput:
            return loss(self.core, batch, model, self.config, self.label_smoothing)

        def begin_task(self, task: TaskInfo) -> None:
            self.core.buffer.begin_task(task.seed, task.index)

        def after_step(self, batch: Batch, step: int) -> None:
            """Offer the batch's update pairs to the reservoir, with (DER) their embeddings from this step's
            loss (device ops only)."""
            self.core.after_step(batch)

        def state_dict(self) -> dict[str, Any]:
            return self.core.state_dict()

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.core.load_state_dict(state, self.name)

    ReservoirMethod.__name__ = ReservoirMethod.__qualname__ = class_name
    ReservoirMethod.__doc__ = doc
    return register_method(name)(ReservoirMethod)


Er = _reservoir_method(
    "er", "Er", ErConfig, embeddings=False,
    loss=lambda core, batch, model, cfg, ls: er_loss(core, batch, model, cfg.combine, ls),
    doc="""ER (Chaudhry et al. 2019): CLIP loss over the batch plus a replay minibatch from a reservoir.

    The reservoir holds ``buffer_size`` update pairs (Algorithm R, filled on the device in ``after_step``);
    the replayed pairs are scored at the model's own temperature.
    """,
)
Der = _reservoir_method(
    "der", "Der", DerConfig, embeddings=True,
    loss=lambda core, batch, model, cfg, ls: der_loss(core, batch, model, cfg.alpha, 0.0, ls),
    doc="""DER (Buzzega et al. 2020): CLIP loss + α·‖f(x) − z‖² to the embeddings stored with replayed pairs.

    The reservoir stores each pair's image and text embeddings from the step that inserted it.
    """,
)
Derpp = _reservoir_method(
    "derpp", "Derpp", DerppConfig, embeddings=True,
    loss=lambda core, batch, model, cfg, ls: der_loss(core, batch, model, cfg.alpha, cfg.beta, ls),
    doc="DER++ (Buzzega et al. 2020): DER plus β·CLIP loss on the replayed pairs (one replay minibatch).",
)
