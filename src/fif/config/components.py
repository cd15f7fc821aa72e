"""The one place that turns config sections into components: each function takes a section of the typed
config tree and returns the typed object a component below takes (components never read the config)."""

from __future__ import annotations

from typing import Any

from fif.config.schema import DataConfig, EvalConfig, StreamConfig, TrainConfig
from fif.data.stream import OrderingOptions
from fif.model.loss import ClipLoss
from fif.train.schedules import ScheduleSpec


def schedule_from_config(train_cfg: TrainConfig) -> ScheduleSpec:
    """The :class:`ScheduleSpec` of a ``train`` config section.

    Reads ``schedule``, ``lr``, ``lr_min_ratio``, ``warmup_frac`` and, where the config has them,
    ``cooldown_frac``, ``decay_frac`` and ``anneal_shape`` (else the spec's defaults).

    Raises:
        ValueError: an unknown schedule name or out-of-range value.
    """
    optional: dict[str, Any] = {
        key: getattr(train_cfg, key)
        for key in ("cooldown_frac", "decay_frac", "anneal_shape")
        if getattr(train_cfg, key, None) is not None
    }
    return ScheduleSpec(
        name=train_cfg.schedule,
        lr=train_cfg.lr,
        lr_min_ratio=train_cfg.lr_min_ratio,
        warmup_frac=train_cfg.warmup_frac,
        **optional,
    )


def clip_loss_from_config(train_cfg: TrainConfig) -> ClipLoss:
    """The :class:`ClipLoss` settings of a ``train`` config section (``label_smoothing``)."""
    return ClipLoss(label_smoothing=train_cfg.label_smoothing)


def ordering_options(stream: StreamConfig, batch_size: int = 256, precision: str = "fp32") -> OrderingOptions:
    """The :class:`OrderingOptions` of a config's ``stream`` section."""
    return OrderingOptions(
        interleave=stream.interleave, period_years=stream.period_years, corpus=stream.corpus, start=stream.start,
        difficulty_split=stream.difficulty_split, difficulty_samples=stream.difficulty_samples,
        batch_size=batch_size, precision=precision,
    )


def eval_workers(eval_cfg: EvalConfig, data_cfg: DataConfig) -> int:
    """Worker processes that decode evaluation images: ``eval.num_workers``, else ``data.num_workers``."""
    return data_cfg.num_workers if eval_cfg.num_workers is None else eval_cfg.num_workers
