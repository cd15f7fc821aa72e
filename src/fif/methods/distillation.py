"""Distillation: LwF and ZSCL keep the model's image–text similarities close to a frozen teacher's.

Both add a temperature-scaled KL divergence (Hinton et al. 2015) to the CLIP loss,

    L = L_CLIP + λ · T² · KL( softmax(z_teacher / T) ‖ softmax(z_student / T) ),

with z the image→text logits exp(s)·I·Tᵀ of each model at its own temperature, and differ in the teacher
and in what the logits are taken over (FiF §4, "distillation"):

- **LwF** (Li & Hoiem 2017), adapted to CLIP: the teacher is the model as it was at the end of the
  previous task (the base model θ0 on the first task); logits over the batch's own captions, every row.
- **ZSCL** (Zheng et al. 2023): the teacher is the zero-shot model θ0, forever; logits of the batch's
  pretraining-pool images (``Batch.source == 0``; every image where the batch has none) over a fixed
  reference caption set sampled once from the pretraining pool with the run seed (each step distils over
  a random subset of it, as many as the batch by default); both directions (each image over the reference
  texts, each reference text over those images), as ZSCL does. Optionally its weight consolidation: WiSE
  interpolation with θ0 or the running average of the task's weights.

The teacher is one frozen copy of the model (eval mode, no gradients), held by the method, outside the
model: it is not among the trainable parameters, not in the deployed weights, and never trained. Its
forward runs inside :meth:`loss`, so the budget's step measurement charges it. On the meta device (the
budget's FLOP count) a weightless meta twin of the teacher stands in. See docs/methods-distillation-replay.md.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fif.core.flops import count_flops, meta_copy
from fif.core.seeding import seeded_generator
from fif.data.batch import Batch
from fif.methods.base import BaseMethod, HookCost, LossOutput, TaskInfo, tensor_bytes
from fif.methods.common import check_choice, check_non_negative, check_positive, stand_in
from fif.methods.registry import register_method
from fif.methods.regularizers.importance import Anchor
from fif.model.clip import Clip
from fif.model.loss import clip_features

log = logging.getLogger(__name__)

_MASKED = -1e9  # logit of a column left out of a softmax (exp underflows to exactly 0, no inf − inf)


# ----------------------------------------------------------------------------------------------
# The math


def distillation_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    row_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """T² · weighted mean over rows of KL(softmax(t/T) ‖ softmax(s/T)) (Hinton et al. 2015).

    Computed in fp32 whatever the autocast dtype. Zero when the logits agree row by row (up to a
    per-row constant); the T² keeps gradient magnitudes comparable across temperatures.

    Args:
        student_logits, teacher_logits: (rows, classes); the teacher's carry no gradient.
        temperature: T > 0.
        row_weights: (rows,) non-negative weights (None = plain mean); rows of weight 0 do not count.
    """
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    rows = (t.exp() * (t - s)).sum(-1)
    if row_weights is None:
        mean = rows.mean()
    else:
        w = row_weights.to(rows.dtype)
        mean = (rows * w).sum() / w.sum().clamp_min(1e-12)
    return temperature * temperature * mean


def pretraining_rows(source: torch.Tensor) -> torch.Tensor:
    """(B,) float weights: 1 on the pretraining-pool rows (``source == 0``), 0 elsewhere; all ones when
    the batch has no pretraining rows (ZSCL's fallback). Device ops only: no host sync."""
    mask = (source == Batch.PRETRAINING).float()
    return torch.where(mask.sum() > 0, mask, torch.ones_like(mask))


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode whose parameters need no gradient (a teacher)."""
    teacher = copy.deepcopy(model)
    teacher.requires_grad_(False)
    return teacher.eval()


class FrozenTeacher:
    """One frozen copy of the model's weights, kept outside the model.

    ``on(device)`` gives the module to run: the teacher itself, or on the meta device (where the budget
    counts a step's FLOPs without running it) a weightless meta twin with the same shapes.
    """

    def __init__(self, model: nn.Module):
        self.module = frozen_copy(model)
        self._meta: nn.Module | None = None

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def on(self, device: torch.device) -> nn.Module:
        if device.type == "meta" and self.device.type != "meta":
            if self._meta is None:

                self._meta = meta_copy(self.module)[0].eval()
            return self._meta
        if self.module.training:  # nothing may put the teacher in train mode (BatchNorm, dropout)
            self.module.eval()
        return self.module

    def load_(self, weights: dict[str, torch.Tensor]) -> None:
        """Copy ``weights`` into the teacher in place (no new allocation)."""
        with torch.no_grad():
            self.module.load_state_dict(weights)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.module.state_dict())


# ----------------------------------------------------------------------------------------------
# LwF


@dataclass
class LwfConfig:
    strength: float = field(default=1.0, metadata={"help": "λ of the distillation term (needs tuning per model and data)"})
    temperature: float = field(default=2.0, metadata={"help": "T of the distillation softmax (LwF: 2)"})
    symmetric: bool = field(
        default=False, metadata={"help": "also distil the text→image logits (mean of both directions)"}
    )

    def __post_init__(self):
        check_positive("strength", self.strength)
        check_positive("temperature", self.temperature)


@register_method("lwf")
class Lwf(BaseMethod):
    """LwF (Li & Hoiem 2017): CLIP loss + λ·T²·KL to the last task's model's image→text logits.

    The teacher is the model frozen at the end of the previous task (θ0 on the first); the logits are over
    the batch's own captions.
    """

    Config = LwfConfig
    owns_start_weights = "its teacher is the weights the previous task ended with, where the next task starts"

    def __init__(self, clip: Clip, config: LwfConfig):
        super().__init__(clip, config)
        # θ0 until the first task ends: the "previous model" of a continual pretraining stream is the
        # base model, so every task (and the budget's step measurement) runs the same teacher forward.
        self.teacher = FrozenTeacher(clip.model)

    def loss(self, batch: Batch, model: nn.Module) -> LossOutput:
        img, txt, scale = clip_features(model, batch)
        clip = self.clip_loss(img, txt, scale)
        with torch.no_grad():
            t_img, t_txt, t_scale = clip_features(self.teacher.on(batch.images.device), batch)
            t_logits = t_scale * t_img @ t_txt.t()
        s_logits = scale * img @ txt.t()
        cfg = self.config
        kd = distillation_kl(s_logits, t_logits, cfg.temperature)
        if cfg.symmetric:
            kd = 0.5 * (kd + distillation_kl(s_logits.t(), t_logits.t(), cfg.temperature))
        return LossOutput(clip + cfg.strength * kd, {"clip": clip.detach(), "distill": kd.detach()})

    def end_task(self, task: TaskInfo) -> None:
        """The teacher ← the weights the task ended with (copied in place: one copy, not one per task)."""
        self.teacher.load_(self.clip.model.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"teacher"}:
            raise ValueError(f"method 'lwf': checkpoint state must hold exactly 'teacher', got keys {sorted(state)}")
        try:
            self.teacher.load_(state["teacher"])
        except RuntimeError as e:
            raise ValueError(f"method 'lwf': the checkpoint's teacher does not fit the model ({e})") from e


# ----------------------------------------------------------------------------------------------
# ZSCL


REFERENCES = ("pool", "batch")
ENSEMBLES = ("none", "wise", "average")


@dataclass
class ZsclConfig:
    strength: float = field(default=1.0, metadata={"help": "λ of the distillation terms (needs tuning per model and data)"})
    temperature: float = field(default=2.0, metadata={"help": "T of the distillation softmax (ZSCL: 2)"})
    reference: str = field(
        default="pool",
        metadata={"help": "reference captions: pool = reference_size captions of the pretraining pool, drawn "
                  "once with the run seed (ZSCL); batch = the batch's own captions"},
    )
    reference_size: int = field(default=1000, metadata={"help": "captions in the pool reference set"})
    reference_per_step: int = field(
        default=0,
        metadata={"help": "reference captions each step distils over, drawn at random from the set (0 = as many "
                  "as the batch; >= reference_size = the whole set every step; each one costs a student text "
                  "forward and backward)"},
    )
    ensemble: str = field(
        default="none",
        metadata={"help": "weight consolidation at each task end: none; wise = (1−α)·θ + α·θ0; average = the "
                  "running mean of the task's weights every average_every steps (ZSCL's WC). The next task "
                  "trains from, and evaluation sees, the consolidated weights"},
    )
    wise_alpha: float = field(default=0.5, metadata={"help": "α of ensemble=wise: the weight of θ0"})
    average_every: int = field(default=10, metadata={"help": "steps between the samples of ensemble=average (the task's start weights are the first)"})
    l2_strength: float = field(
        default=0.0,
        metadata={"help": "μ of ZSCL's optional L2 term μ·Σ‖θ − θ_start‖² to the task's start weights (0 = off)"},
    )

    def __post_init__(self):
        check_positive("strength", self.strength)
        check_positive("temperature", self.temperature)
        check_choice("reference", self.reference, REFERENCES)
        check_positive("reference_size", self.reference_size, integer=True)
        per_step = self.reference_per_step
        if not isinstance(per_step, int) or isinstance(per_step, bool) or per_step < 0:
            raise ValueError(f"method.reference_per_step must be an integer >= 0 (0 = as many as the batch), got {per_step!r}")
        check_choice("ensemble", self.ensemble, ENSEMBLES)
        if not 0.0 <= self.wise_alpha <= 1.0:
            raise ValueError(f"method.wise_alpha must be in [0, 1] (0 = no interpolation), got {self.wise_alpha!r}")
        check_positive("average_every", self.average_every, integer=True)
        check_non_negative("l2_strength", self.l2_strength)


@register_method("zscl")
class Zscl(BaseMethod):
    """ZSCL (Zheng et al. 2023): CLIP loss + distillation of θ0 on reference captions, + weight ensembling.

    λ·T²·(KL image→reference texts + KL reference text→images) against the frozen zero-shot model θ0, on
    the batch's pretraining-pool rows; optional weight consolidation (WiSE with θ0, or the running average
    of the task's weights).
    """

    Config = ZsclConfig
    owns_start_weights = "its weight ensemble (ensemble=wise/average) sets the weights each task starts from"

    def __init__(self, clip: Clip, config: ZsclConfig):
        super().__init__(clip, config)
        self.teacher = FrozenTeacher(clip.model)  # θ0: rebuilt from the base model on resume, never saved
        self._context_length = int(clip.tokenize([""]).shape[-1])
        self.reference_tokens: torch.Tensor | None = None  # (N, L) on the device, fixed for the run
        self._teacher_reference: torch.Tensor | None = None  # (N, D) teacher text features, cached per task
        self._warned = False
        # Weight consolidation: ``pending`` between a task's end and the next task's start.
        self._pending = False
        self._start: dict[str, torch.Tensor] | None = None
        self._average: dict[str, torch.Tensor] | None = None
        self._average_count = 0
        self._reference_cost: HookCost | None = None
        self.generator = seeded_generator(self.teacher.device, 0, "zscl-reference")
        self._to_start = Anchor(self.trainable_parameters()) if config.l2_strength > 0 else None

    # --- the reference set ------------------------------------------------------------------------
    def _reference_for(self, device: torch.device) -> torch.Tensor | None:
        """Reference tokens for a step on ``device`` (None: distil over the batch's captions).

        On the meta device the pool set is charged at its configured size even before it is drawn, so
        the budget's step cost (measured before the first task) is that of the real steps.
        """
        if self.config.reference != "pool":
            return None
        if self.reference_tokens is not None:
            return stand_in(self.reference_tokens, device)
        if device.type == "meta":
            return torch.zeros(self.config.reference_size, self._context_length, dtype=torch.long, device="meta")
        return None

    def _draw_reference(self, task: TaskInfo) -> None:
        """Tokenize ``reference_size`` pool captions (drawn by the runner with the run seed), once per run."""
        if self.config.reference != "pool" or self.reference_tokens is not None:
            return
        texts = task.data.reference_texts(self.config.reference_size) if task.data is not None else []
        if not texts:
            if not self._warned:
                log.warning(
                    "zscl: no pretraining-pool captions for the reference set (no pool in this run, "
                    "data.mixture.pretraining=0?); distilling over the batch's captions instead. Set "
                    "method.reference=batch to say so (the budget charged the pool set's size)"
                )
                self._warned = True
            return
        self.reference_tokens = self.clip.tokenize(texts).to(self.teacher.device)

    def _step_rows(self, tokens: torch.Tensor, batch_size: int) -> torch.Tensor | None:
        """Rows of the reference set this step distils over (None: all of them), drawn without replacement."""
        count = tokens.shape[0]
        rows = min(self.config.reference_per_step or batch_size, count)
        if rows >= count:
            return None
        if tokens.device.type == "meta":
            return torch.arange(rows, device="meta")
        return torch.randperm(count, generator=self.generator, device=tokens.device)[:rows]

    def _teacher_text(self, teacher: nn.Module, tokens: torch.Tensor, dim: int) -> torch.Tensor:
        """The teacher's (N, dim) reference text features, cached (computed at most once per task)."""
        if tokens.device.type == "meta":  # the budget's FLOP count: a cached tensor costs nothing per step
            return torch.empty(tokens.shape[0], dim, device="meta")
        if self._teacher_reference is None:  # first step after a mid-task resume: as begin_task does, in fp32
            with torch.autocast(tokens.device.type, enabled=False):
                self._teacher_reference = teacher.encode_text(tokens, normalize=True)
        return self._teacher_reference

    # --- the objective ---------------------------------------------------------------------------
    def loss(self, batch: Batch, model: nn.Module) -> LossOutput:
        img, txt, scale = clip_features(model, batch)
        clip = self.clip_loss(img, txt, scale)
        device, cfg = batch.images.device, self.config
        teacher = self.teacher.on(device)
        rows = pretraining_rows(batch.source)
        tokens = self._reference_for(device)
        rows_ref = None if tokens is None else self._step_rows(tokens, len(batch))
        with torch.no_grad():
            t_img = teacher.encode_image(batch.images, normalize=True)  # whole batch: static shapes, no sync
            if tokens is None:
                t_ref = teacher.encode_text(batch.tokens, normalize=True)
            else:
                t_ref = self._teacher_text(teacher, tokens, t_img.shape[-1])
                if rows_ref is not None:
                    t_ref, tokens = t_ref.index_select(0, rows_ref), tokens.index_select(0, rows_ref)
            t_scale = teacher.logit_scale.exp()
            t_logits = t_scale * t_img @ t_ref.t()
            t_text = t_scale * t_ref @ t_img.t()  # the same product as the student's text side, so 0 at θ0
        s_ref = txt if tokens is None else model.encode_text(tokens, normalize=True)
        # Image side (Zheng et al.): the student's images against θ0's fixed reference text features, so
        # the student's own text tower is not in this term (it would distil itself).
        s_logits = scale * img @ t_ref.t().to(img.dtype)
        image_side = distillation_kl(s_logits, t_logits, cfg.temperature, rows)
        # Text side: the student's reference texts against θ0's image features, over the pretraining
        # images only (other columns masked out).
        s_text = scale * s_ref @ t_img.t().to(s_ref.dtype)
        out_cols = (rows == 0)[None, :]
        text_side = distillation_kl(
            s_text.float().masked_fill(out_cols, _MASKED), t_text.float().masked_fill(out_cols, _MASKED),
            cfg.temperature,
        )
        total = clip + cfg.strength * (image_side + text_side)
        parts = {"clip": clip.detach(), "distill_image": image_side.detach(), "distill_text": text_side.detach()}
        l2 = None if self._to_start is None else self._to_start.penalty()
        if l2 is not None:
            total = total + cfg.l2_strength * l2
            parts["l2_to_start"] = l2.detach()
        return LossOutput(total, parts)

    # --- hooks -----------------------------------------------------------------------------------
    def begin_task(self, task: TaskInfo) -> None:
        self.generator = seeded_generator(self.teacher.device, task.seed, "zscl-reference", task.index)
        self._draw_reference(task)
        if self.reference_tokens is not None and self._teacher_reference is None:  # θ0 and the set never change
            with torch.no_grad():
                self._teacher_reference = self.teacher.module.encode_text(self.reference_tokens, normalize=True)
        self._start = self._consolidated() if self._pending else None
        self._pending = False
        self._average_count = 0

    def after_step(self, batch: Batch, step: int) -> None:
        """ensemble=average: fold the weights into the running mean every ``average_every`` steps (device ops)."""
        if self.config.ensemble != "average" or (step + 1) % self.config.average_every:
            return
        self._fold_into_average(self.clip.model.state_dict())

    def _fold_into_average(self, weights: dict[str, torch.Tensor]) -> None:
        """One more sample of the running mean (the first sample of a task replaces the old mean in place)."""
        floats = {k: v for k, v in weights.items() if v.is_floating_point()}
        self._average_count += 1
        with torch.no_grad():
            if self._average is None:
                self._average = {k: v.detach().clone() for k, v in floats.items()}
            elif self._average_count == 1:
                for k, v in floats.items():
                    self._average[k].copy_(v)
            else:
                for k, v in floats.items():
                    self._average[k].lerp_(v, 1.0 / self._average_count)

    def end_task(self, task: TaskInfo) -> None:
        self._pending = self.config.ensemble != "none"

    def extra_cost(self, task: TaskInfo) -> HookCost:
        """The teacher's forward over the reference captions, charged to the first task (pool reference only).

        θ0 and the reference set never change, so the features are computed once and cached for the run
        (recomputed, not charged again, after a resume: the uninterrupted run paid for them at task 0).
        """
        if self.config.reference != "pool" or task.index > 0:
            return HookCost()
        if self._reference_cost is None:

            teacher = self.teacher.on(torch.device("meta"))
            tokens = torch.zeros(self.config.reference_size, self._context_length, dtype=torch.long, device="meta")
            with torch.no_grad():
                self._reference_cost = HookCost(flops=float(count_flops(lambda: teacher.encode_text(tokens))))
        return self._reference_cost

    # --- weights -----------------------------------------------------------------------------------
    def _consolidated(self) -> dict[str, torch.Tensor] | None:
        """The model's weights after weight consolidation (None: the model as it is)."""
        current = self.clip.model.state_dict()
        if self.config.ensemble == "wise":
            theta0, alpha = self.teacher.module.state_dict(), self.config.wise_alpha
            return {k: torch.lerp(v, theta0[k], alpha) if v.is_floating_point() else v.clone() for k, v in current.items()}
        if self.config.ensemble == "average" and self._average is not None and self._average_count > 0:
            return {k: self._average[k].clone() if k in self._average else v.clone() for k, v in current.items()}
        return None

    def training_weights(self) -> dict[str, torch.Tensor] | None:
        """The consolidated weights of the last task (None on the first). ensemble=average: they are also
        the running mean's first sample (ZSCL's weight consolidation averages from the task's start)."""
        start, self._start = self._start, None
        if self.config.ensemble == "average" and self._average_count == 0:
            self._fold_into_average(start if start is not None else self.clip.model.state_dict())
        if self._to_start is not None:  # θ_start of the L2 term: the weights this task trains from
            self._to_start.set_anchor()
            if start is not None:
                with torch.no_grad():
                    for n, a in self._to_start.anchor.items():
                        a.copy_(start[n])
            self._to_start.importance = {n: torch.ones((), device=a.device) for n, a in self._to_start.anchor.items()}
        return start

    def deploy_weights(self) -> dict[str, torch.Tensor] | None:
        return self._consolidated() if self._pending else None

    # --- resume --------------------------------------------------------------------------------------
    def state_bytes(self) -> float:
        """The θ0 teacher, the weight ensemble's running average (one more copy of the model from the
        first task's end on) and the reference captions with their cached teacher features."""
        model = tensor_bytes(self.teacher.state_dict())
        return float(2 * model + tensor_bytes([self.reference_tokens, self._teacher_reference]))

    def state_dict(self) -> dict[str, Any]:
        return {
            "reference_tokens": self.reference_tokens,
            "pending": self._pending,
            "average": self._average,
            "average_count": self._average_count,
            "generator": None if self.generator is None else self.generator.get_state(),
            "start": None if self._to_start is None else self._to_start.anchor,  # θ_start of the L2 term
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        keys = {"reference_tokens", "pending", "average", "average_count", "generator", "start"}
        if set(state) != keys:
            raise ValueError(f"method 'zscl': checkpoint state must hold {sorted(keys)}, got {sorted(state)}")
        device = self.teacher.device
        tokens = state["reference_tokens"]
        self.reference_tokens = None if tokens is None else tokens.to(device=device, dtype=torch.long)
        self._teacher_reference = None  # recomputed at the next step
        self._pending = bool(state["pending"])
        average = state["average"]
        if average is not None:
            floats = {k: v for k, v in self.clip.model.state_dict().items() if v.is_floating_point()}
            if set(average) != set(floats):
                raise ValueError(
                    "method 'zscl': the checkpoint's weight average does not fit the model; resume with the same model"
                )
            average = {k: v.to(device=floats[k].device, dtype=floats[k].dtype).clone() for k, v in average.items()}
        self._average = average
        self._average_count = int(state["average_count"])
        if state["generator"] is not None and self.generator is not None:
            self.generator.set_state(state["generator"].cpu())
        if self._to_start is not None and state["start"] is not None:
            self._to_start.load_state_dict({"anchor": state["start"], "importance": None}, self.name)
            self._to_start.importance = {n: torch.ones((), device=a.device) for n, a in self._to_start.anchor.items()}
