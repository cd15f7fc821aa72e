"""Cross-field validation of a converted :class:`Config`: every problem as ``key: what is wrong``.

:func:`validate` returns the list (empty if valid); :func:`fif.config.load.load_config` raises it as one
:class:`ConfigError`. Method options and the merge section are checked by their own modules
(``fif.methods``, ``fif.merge.temporal``).
"""

from __future__ import annotations

import difflib

import torch

from fif.budget import ACCOUNTINGS
from fif.config.composition import composition_problems
from fif.config.schema import (
    BUDGET_MEMORY,
    OPTIMIZER_IMPLS,
    OPTIMIZERS,
    TEMPERATURES,
    CheckpointConfig,
    Config,
    GuardConfig,
    MergeConfig,
    StreamConfig,
    TrainConfig,
)
from fif.core.deps import missing_dependency_problems
from fif.core.typed import from_dict
from fif.data.stream import DIFFICULTY_SPLITS, ORDERINGS, REFERENCES
from fif.merge.temporal import merge_config_problems
from fif.methods import method_class, method_config_problems, shard_problem
from fif.train.distributed import MODES
from fif.train.schedules import ANNEAL_SHAPES, schedule_names, unknown_schedule_message


def validate(cfg: Config) -> list[str]:
    """Every cross-field problem of a converted config (empty list if valid)."""
    p: list[str] = []
    m = cfg.data.mixture
    for name in ("pretraining", "update", "buffer"):
        v = getattr(m, name)
        if not 0.0 <= v <= 1.0:
            p.append(f"data.mixture.{name}: {v} must be in [0, 1]")
    total = m.pretraining + m.update + m.buffer
    if abs(total - 1.0) > 1e-6:
        p.append(
            f"data.mixture: pretraining + update + buffer = {total:.4g}, must sum to 1 "
            f"(e.g. data.mixture.pretraining=0.33 data.mixture.update=0.34 data.mixture.buffer=0.33)"
        )
    if m.update <= 0:
        p.append("data.mixture.update: must be > 0, or there is nothing new to learn")
    if m.buffer_cap is not None and m.buffer_cap < 1:
        p.append("data.mixture.buffer_cap: must be a positive integer or null")
    if cfg.data.max_bad_samples < 0:
        p.append(f"data.max_bad_samples: {cfg.data.max_bad_samples} must be >= 0 (0 = stop at the first unreadable image)")
    t = cfg.train
    if t.batch_size < 1:
        p.append(f"train.batch_size: {t.batch_size} must be >= 1")
    if t.lr <= 0:
        p.append(f"train.lr: {t.lr} must be > 0")
    if not 0 <= t.lr_min_ratio <= 1:
        p.append(f"train.lr_min_ratio: {t.lr_min_ratio} must be in [0, 1]")
    if not 0 <= t.warmup_frac < 1:
        p.append(f"train.warmup_frac: {t.warmup_frac} must be in [0, 1)")
    if t.weight_decay < 0:
        p.append("train.weight_decay: must be >= 0")
    if t.grad_clip is not None and t.grad_clip <= 0:
        p.append("train.grad_clip: must be > 0 or null")
    if t.schedule not in schedule_names():
        p.append(f"train.schedule: {unknown_schedule_message(t.schedule)}")
    if t.precision not in ("auto", "fp32", "bf16", "fp16"):
        p.append(f"train.precision: {t.precision!r} is not one of auto, fp32, bf16, fp16")
    if t.log_every < 1:
        p.append("train.log_every: must be >= 1")
    p.extend(_validate_recipe(t))
    p.extend(_validate_stream(cfg.stream))
    b = cfg.budget
    if b.mafs is None and b.ft_steps is None:
        p.append("budget: set budget.ft_steps (full fine-tuning steps) or budget.mafs")
    if b.ft_steps is not None and b.ft_steps <= 0:
        p.append(f"budget.ft_steps: {b.ft_steps} must be > 0")
    if b.mafs is not None and b.mafs <= 0:
        p.append(f"budget.mafs: {b.mafs} must be > 0")
    if b.accounting not in ACCOUNTINGS:
        p.append(f"budget.accounting: {b.accounting!r} is not one of {', '.join(ACCOUNTINGS)}")
    p += _choice("budget.memory", b.memory, BUDGET_MEMORY)
    e = cfg.eval
    if e.batch_size < 1:
        p.append("eval.batch_size: must be >= 1")
    if not 0 < e.subset_frac <= 1:
        p.append(f"eval.subset_frac: {e.subset_frac} must be in (0, 1]")
    if e.every_steps < 0:
        p.append(f"eval.every_steps: {e.every_steps} must be >= 0 (0 = no evaluation inside tasks)")
    if e.precision not in ("auto", "fp32", "bf16", "fp16"):
        p.append(f"eval.precision: {e.precision!r} is not one of auto, fp32, bf16, fp16")
    for key, workers in (("data.num_workers", cfg.data.num_workers), ("eval.num_workers", e.num_workers)):
        if workers is not None and workers < 0:
            p.append(f"{key}: {workers} must be >= 0 (0 = in the main process)")
    if cfg.log.wandb_mode not in ("offline", "online", "disabled"):
        p.append(f"log.wandb_mode: {cfg.log.wandb_mode!r} is not one of offline, online, disabled")
    p.extend(_validate_run(cfg))
    p.extend(_validate_reliability(cfg.checkpoint, cfg.guard))
    p.extend(_validate_method(cfg))
    p.extend(_validate_merge(cfg.merge))
    p.extend(composition_problems(cfg.merge, cfg.method.name))
    p.extend(_validate_sharding(cfg))
    return p


def _validate_run(cfg: Config) -> list[str]:
    """The run section, the data loader, and the optional packages the log section needs."""
    r, p = cfg.run, []
    if r.threads < 0:
        p.append("run.threads: must be >= 0")
    if not 0 <= r.seed < 2**32:
        p.append(f"run.seed: {r.seed} must be in [0, 2**32) (numpy's seed range)")
    if r.device != "auto":
        try:
            torch.device(r.device)
        except (RuntimeError, ValueError):
            p.append(f"run.device: {r.device!r} is not a device; use auto, cpu, cuda or cuda:N")
    if cfg.data.num_workers < 0:
        p.append(f"data.num_workers: {cfg.data.num_workers} must be >= 0 (0 = load in the main process)")
    if cfg.eval.min_samples < 0:
        p.append(f"eval.min_samples: {cfg.eval.min_samples} must be >= 0")
    if cfg.log.tensorboard:
        p += missing_dependency_problems("log.tensorboard=true", ("tensorboard",), "set log.tensorboard=false")
    if cfg.log.wandb:
        p += missing_dependency_problems("log.wandb=true", ("wandb",), "set log.wandb=false")
    return p


def _choice(key: str, value: str, choices: tuple[str, ...]) -> list[str]:
    if value in choices:
        return []
    close = difflib.get_close_matches(str(value), choices, n=2, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return [f"{key}: {value!r} is not valid{hint} Valid: {', '.join(choices)}"]


def _validate_recipe(t: TrainConfig) -> list[str]:
    """Problems with the recipe knobs of the train section (optimizer, accumulation, temperature, ...)."""
    p = _choice("train.optimizer", t.optimizer, OPTIMIZERS)
    p += _choice("train.optimizer_impl", t.optimizer_impl, OPTIMIZER_IMPLS)
    for key, beta in (("beta1", t.beta1), ("beta2", t.beta2)):
        if not 0 <= beta < 1:
            p.append(f"train.{key}: {beta} must be in [0, 1) (AdamW's moment decay; sgd's momentum is beta1)")
    if t.eps <= 0:
        p.append(f"train.eps: {t.eps} must be > 0 (AdamW divides by sqrt(v) + eps; FiF: 1e-8)")
    p += _choice("train.temperature", t.temperature, TEMPERATURES)
    p += _choice("train.anneal_shape", t.anneal_shape, ANNEAL_SHAPES)
    if not 0 <= t.cooldown_frac < 1:
        p.append(f"train.cooldown_frac: {t.cooldown_frac} must be in [0, 1)")
    if not 0 <= t.decay_frac <= 1:
        p.append(f"train.decay_frac: {t.decay_frac} must be in [0, 1]")
    if not 1 <= t.grad_accum_steps <= t.batch_size:
        p.append(
            f"train.grad_accum_steps: {t.grad_accum_steps} must be in [1, train.batch_size={t.batch_size}] "
            f"(micro-batch = batch_size / grad_accum_steps samples)"
        )
    if not 0 <= t.label_smoothing < 1:
        p.append(f"train.label_smoothing: {t.label_smoothing} must be in [0, 1)")
    p += _validate_distributed(t)
    if t.fixed_logit_scale is not None:
        if t.temperature != "fixed":
            p.append("train.fixed_logit_scale: only used with train.temperature=fixed; set that or drop the value")
        if not 0 < t.fixed_logit_scale <= 100:
            p.append(
                f"train.fixed_logit_scale: {t.fixed_logit_scale} must be in (0, 100] "
                f"(the multiplier exp(s); CLIP starts at 1/0.07 ≈ 14.3 and clamps at 100)"
            )
    return p


def _validate_distributed(t: TrainConfig) -> list[str]:
    """Problems with train.distributed (the device and world size are checked at launch, fif.train.distributed)."""

    p = _choice("train.distributed", t.distributed, MODES)
    if t.distributed != "none" and t.grad_accum_steps > 1:
        p.append(
            f"train.grad_accum_steps={t.grad_accum_steps} with train.distributed={t.distributed}: not supported; more "
            "processes already split the batch (use train.grad_accum_steps=1, or train.distributed=none)"
        )
    if t.dist_timeout_minutes <= 0:
        p.append(f"train.dist_timeout_minutes: {t.dist_timeout_minutes} must be > 0")
    return p


def _validate_sharding(cfg: Config) -> list[str]:
    """``train.distributed=fsdp``: what a sharded task cannot do (each problem names the key and the fix)."""
    if cfg.train.distributed != "fsdp":
        return []
    p = [problem] if (problem := shard_problem(cfg.method.name)) else []
    if not cfg.train.optimizer_reset:
        p.append("train.optimizer_reset=false with train.distributed=fsdp: each task's optimizer holds the shards "
                 "of that task's copy; use train.optimizer_reset=true or train.distributed=ddp")
    if "online_ema" in (cfg.merge.init, cfg.merge.deploy):
        p.append("merge online_ema with train.distributed=fsdp: the per-step EMA reads the whole weights after every "
                 "step, which a sharded task holds only in shards; use merge.preset=ema_merge or train.distributed=ddp")
    return p


def _validate_stream(s: StreamConfig) -> list[str]:

    p: list[str] = []
    if s.tasks < 1:
        p.append(f"stream.tasks: {s.tasks} must be >= 1")
    for key, value, valid in (("ordering", s.ordering, ORDERINGS), ("reference", s.reference, REFERENCES),
                              ("difficulty_split", s.difficulty_split, DIFFICULTY_SPLITS)):
        if value not in valid:
            close = difflib.get_close_matches(str(value), valid, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            p.append(f"stream.{key}: {value!r} is not one of {', '.join(valid)}{hint}")
    if s.ordering == "file" and not s.file:
        p.append("stream.file: ordering=file needs stream.file=/path/to/stream.json")
    if s.period_years < 1:
        p.append(f"stream.period_years: {s.period_years} must be >= 1")
    if s.difficulty_samples < 1:
        p.append(f"stream.difficulty_samples: {s.difficulty_samples} must be >= 1")
    return p


def _validate_reliability(c: CheckpointConfig, g: GuardConfig) -> list[str]:
    p: list[str] = []
    if c.every_steps < 0:
        p.append(f"checkpoint.every_steps: {c.every_steps} must be >= 0 (0 = only at task ends)")
    if c.keep_last < 1:
        p.append(f"checkpoint.keep_last: {c.keep_last} must be >= 1")
    if g.max_bad_steps < 0:
        p.append(f"guard.max_bad_steps: {g.max_bad_steps} must be >= 0 (0 = skip non-finite steps, never roll back)")
    if not 0 < g.lr_factor <= 1:
        p.append(f"guard.lr_factor: {g.lr_factor} must be in (0, 1]")
    if g.max_rollbacks < 0:
        p.append(f"guard.max_rollbacks: {g.max_rollbacks} must be >= 0")
    return p


def method_defaults_problems(defaults: dict) -> list[str]:
    """Problems with ``method.defaults``: each key a registered method, each value that method's options."""
    problems: list[str] = []
    for name, options in defaults.items():
        key = f"method.defaults.{name}"
        try:
            cls = method_class(name)
        except KeyError as e:
            problems.append(f"{key}: {e.args[0]}")
            continue
        if not isinstance(options, dict):
            problems.append(f"{key}: expected a mapping of {name}'s options, got {options!r}")
            continue
        from_dict(cls.Config, options, key, problems)
    return problems


def _validate_method(cfg: Config) -> list[str]:

    return method_config_problems(cfg.method.name, cfg.method.options)


def _validate_merge(m: MergeConfig) -> list[str]:

    return merge_config_problems(m)

