"""The typed configuration tree: dataclasses, YAML presets, dotted ``key=value`` overrides.

``load_config(preset, overrides)`` merges a preset with overrides, converts everything to the
dataclasses below, and validates the whole tree up front, raising one :class:`ConfigError` that lists
every problem (unknown keys get the nearest valid names, wrong types get the expected type).

Method options live under ``method.*`` next to ``method.name`` and are checked against the method's
own config dataclass (see ``fif.methods``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from fif.schedules import ANNEAL_SHAPES, schedule_names, unknown_schedule_message

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """One or more problems in a configuration; ``problems`` lists each as ``key: what is wrong``."""

    def __init__(self, problems: list[str], source: str = ""):
        self.problems, self.source = list(problems), source
        head = f"invalid configuration{f' ({source})' if source else ''}:"
        super().__init__("\n  - ".join([head, *self.problems]))

    def __reduce__(self):  # pickles whole (e.g. raised on every rank of a data-parallel run)
        return type(self), (self.problems, self.source)


def _help(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class RunConfig:
    seed: int = _help("Run seed: every random choice derives from (seed, task, purpose).", 0)
    out: str | None = _help("Run folder; default a new folder under runs/.", None)
    device: str = _help("'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...", "auto")
    threads: int = _help("CPU threads for torch (0 = torch's default).", 0)
    cache_dir: str = _help("Where built base models and generated data are cached.", "~/.cache/fif")


@dataclass
class ModelConfig:
    arch: str = _help("open_clip architecture, e.g. ViT-B-16, or fif-mini-rn32 for the mini benchmark.", "ViT-B-16")
    pretrained: str | None = _help(
        "Weights: an open_clip tag, a local .safetensors/.pt file, 'mini-base' (build/cached), or null.", None
    )
    attention: Literal["default", "custom"] = _help(
        "Transformer blocks: default (the architecture's own) or custom (open_clip's CustomResidualAttentionBlock; "
        "same keys and weights, attention as a plain module).",
        "default",
    )


@dataclass
class MixtureConfig:
    pretraining: float = _help("λ_P: share of each batch from the pretraining pool.", 0.33)
    update: float = _help("λ_D: share of each batch from the current task.", 0.34)
    buffer: float = _help("λ_B: share of each batch from the buffer of all earlier tasks.", 0.33)
    pool: str | None = _help(
        "Pretraining pool: a dataset of the benchmark, WebDataset shards (/data/laion/{00000..00099}.tar, a "
        "folder of .tar, globs) or a CSV/JSONL image,caption manifest (docs/data.md).",
        None,
    )
    buffer_cap: int | None = _help("Optional cap on buffer samples (uniform subsample); null = all past data.", None)


@dataclass
class DataConfig:
    benchmark: str = _help(
        "Benchmark name (mini, fif) or the path of a YAML file describing your own datasets (docs/data.md).", "mini"
    )
    root: str | None = _help(
        "fif: the folder holding FiF's dataset folders; a YAML benchmark: the base of relative locations.", None
    )
    options: dict = _help("Benchmark-specific options (e.g. mini sizes).", factory=dict)
    num_workers: int = _help("DataLoader workers for file-backed data (0 = in the main process).", 0)
    mixture: MixtureConfig = field(default_factory=MixtureConfig)


@dataclass
class StreamConfig:
    ordering: str = _help(
        "Concept order: dataset, random, frequency, similarity, time, easy_to_hard, or file (see stream.file).",
        "dataset",
    )
    tasks: int = _help("Number of update tasks T (ignored for ordering=dataset: one task per dataset).", 20)
    reverse: bool = _help("Reverse the ordering.", False)
    file: str | None = _help("A stream JSON file (list of 'DATASET+++classname') for ordering=file.", None)
    datasets: list = _help("Restrict the stream to these adaptation datasets (empty = all).", factory=list)
    reference: str = _help(
        "Reference point instead of a stream: none; zeroshot (no update, evaluate the base model); "
        "oracle (the whole stream as one task with the whole budget).",
        "none",
    )
    interleave: bool = _help("ordering=time: interleave datasets of the same period (else whole datasets).", False)
    period_years: int = _help("ordering=time with interleave: length of a period in years (year // period_years).", 1)
    corpus: str | None = _help(
        "ordering=frequency: text file (one caption per line) or benchmark dataset to count class names in; "
        "null = the pretraining pool's captions.",
        None,
    )
    start: str | None = _help("ordering=similarity: start concept of the walk; null = try every start.", None)
    difficulty_split: str = _help("ordering=easy_to_hard: split the zero-shot accuracy is measured on.", "train")
    difficulty_samples: int = _help("ordering=easy_to_hard: at most this many samples per class.", 100)


@dataclass
class TrainConfig:
    batch_size: int = _help("Samples per optimizer step (FiF: 512).", 512)
    lr: float = _help("Peak learning rate.", 1e-5)
    lr_min_ratio: float = _help("Cosine floor as a fraction of lr (FiF: 0.001).", 0.001)
    warmup_frac: float = _help("Linear warmup as a fraction of each task's steps.", 0.1)
    schedule: str = _help("Learning-rate schedule (see fif.schedules).", "cosine")
    weight_decay: float = _help("AdamW weight decay (gains, biases, logit_scale excluded).", 0.2)
    beta1: float = _help("AdamW beta1.", 0.9)
    beta2: float = _help("AdamW beta2.", 0.999)
    eps: float = _help("AdamW eps.", 1e-8)
    grad_clip: float | None = _help("Clip the global grad norm to this (null = off).", 1.0)
    precision: str = _help("'auto' (bf16 on GPU, fp32 on CPU), 'fp32', 'bf16', 'fp16'.", "auto")
    log_every: int = _help("Log the loss every N steps (host sync point).", 50)
    cooldown_frac: float = _help("rsqrt schedules: final fraction of each task annealed to lr_min.", 0.1)
    decay_frac: float = _help("wsd schedule: final fraction of each task decayed to lr_min.", 0.2)
    anneal_shape: str = _help("Shape of the wsd decay and the rsqrt cooldown: linear, cosine, sqrt.", "linear")
    optimizer: str = _help("'adamw' (FiF) or 'sgd' (momentum = beta1); both skip decay on gains/biases/logit_scale.", "adamw")
    optimizer_impl: str = _help(
        "Optimizer kernels: 'auto' (fused on CUDA, torch's default elsewhere), 'fused', 'foreach', 'for_loop'.", "auto"
    )
    optimizer_reset: bool = _help(
        "Fresh optimizer state every task (FiF); false carries the moments of shared parameters over.", True
    )
    grad_accum_steps: int = _help(
        "Micro-batches per optimizer step. Same gradient as the whole batch (features cached, loss over the "
        "whole batch, then each micro-batch re-run with grad); exact except BatchNorm statistics.", 1
    )
    grad_checkpointing: bool = _help("Recompute activations in backward to save memory (open_clip towers).", False)
    label_smoothing: float = _help("Label smoothing of the contrastive cross-entropies (0 = off).", 0.0)
    temperature: str = _help("'learnable' logit_scale (clamped at ln 100) or 'fixed' (frozen).", "learnable")
    fixed_logit_scale: float | None = _help(
        "temperature=fixed: the logit multiplier exp(s), in (0, 100] (null = keep the model's value).", None
    )
    distributed: str = _help(
        "Data parallelism across the processes torchrun starts: none, or ddp (each rank trains its rows of the "
        "global batch_size, CLIP features gathered; nccl on GPUs, gloo on CPU; docs/scaling.md). Without torchrun "
        "a run uses one process.", "none"
    )
    dist_timeout_minutes: float = _help(
        "ddp: how long ranks wait for each other (e.g. while rank 0 evaluates or checkpoints) before failing.", 120.0
    )


OPTIMIZERS = ("adamw", "sgd")
OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "for_loop")
TEMPERATURES = ("learnable", "fixed")


@dataclass
class BudgetConfig:
    ft_steps: float | None = _help(
        "Whole-stream budget in full fine-tuning steps at train.batch_size (FiF: 28,400 at batch 512).", 28400
    )
    mafs: float | None = _help("Whole-stream budget in absolute MAFs (overrides ft_steps).", None)


@dataclass
class EvalConfig:
    batch_size: int = _help("Evaluation batch size.", 256)
    subset_frac: float = _help("p in FiF's subset rule n = min(N, max(2C, min_samples, floor(p N))).", 0.1)
    min_samples: int = _help("Minimum subset size per dataset during the stream.", 300)
    full_at_ends: bool = _help("Evaluate on full test sets before the first and after the last task.", True)
    ensemble: bool = _help("Use the dataset's prompt template ensemble (else the primer only).", False)
    datasets: list = _help("Evaluate only these datasets (empty = every adaptation and eval-only dataset).", factory=list)
    every_steps: int = _help(
        "Also evaluate (on the stream subsets) every N optimizer steps inside each task, to see the stability "
        "gap; logged as eval_step events. 0 = off.", 0
    )
    precision: str = _help("Evaluation autocast: 'auto' (= the training precision), 'fp32', 'bf16', 'fp16'.", "auto")


@dataclass
class LogConfig:
    tensorboard: bool = _help("Also write TensorBoard scalars to <run folder>/tensorboard (needs tensorboard).", False)
    wandb: bool = _help("Also log to Weights & Biases (needs wandb; see log.wandb_mode).", False)
    wandb_project: str = _help("W&B project name.", "fif")
    wandb_mode: str = _help("W&B mode: 'offline' (files under the run folder, no account), 'online', 'disabled'.", "offline")


@dataclass
class MethodConfig:
    name: str = _help("Update method (see `fif run --list-methods`).", "finetune")
    options: dict = _help("Method options, checked against the method's own config.", factory=dict)


# Temporal merging (docs/merging.md "Merging inside runs"). A preset fills the axes the user left unset.
MERGE_INITS = ("zeroshot", "last", "ema", "all", "online_ema")
MERGE_DEPLOYS = ("last", "ema", "all", "last_zeroshot", "online_ema")
MERGE_PRESETS: dict[str, dict[str, Any]] = {
    "none": {"init": "last", "deploy": "last"},
    "zs_merge": {"init": "zeroshot", "deploy": "all"},  # FiF ZS-merge
    "ft_merge": {"init": "last", "deploy": "last_zeroshot"},  # FiF FT-merge: merge(latest, θ0)
    "ema_merge": {"init": "ema", "deploy": "ema"},  # FiF EMA-merge = TIME's best: r ← merge(θ_t, r)
    "online_ema": {"init": "last", "deploy": "online_ema"},  # per-step θ_ema ← d·θ_ema + (1 − d)·θ
    "offline_merge": {"init": "last", "deploy": "all"},  # weighted by merge.weights
}


@dataclass
class MergeConfig:
    preset: str | None = _help(
        "Shorthand for the axes: none, zs_merge, ft_merge, ema_merge, online_ema, offline_merge; keys set "
        "explicitly win over the preset's.", None
    )
    init: str | None = _help(
        "What each task trains from: zeroshot (θ0), last (the previous task's end; no merging), ema (the "
        "running merge), all (merge of every task checkpoint so far), online_ema (the per-step EMA). "
        "null = the preset's, else last.", None
    )
    deploy: str | None = _help(
        "What is evaluated and shipped: last (no merging), ema (running merge r ← merge(θ_t, r), r_0 = θ0), "
        "all (merge of every task checkpoint), last_zeroshot (merge(latest, θ0)), online_ema. "
        "null = the preset's, else last.", None
    )
    operator: str = _help("Merge operator (fif.merge: interpolation, slerp, ties, ...); task-vector ones use θ0.",
                          "interpolation")
    options: dict = _help("The operator's options (e.g. {k: 0.2, lam: 1.0} for ties).", factory=dict)
    weights: str = _help(
        "init/deploy=all with interpolation: weighting of the checkpoints: uniform, linear, sqrt, quadratic, "
        "exponential, reversed (newest heaviest except reversed).", "uniform"
    )
    alpha: float = _help(
        "Weight of the newest model when two are interpolated (or slerped): ema r ← α·θ_t + (1 − α)·r; "
        "last_zeroshot α·θ_t + (1 − α)·θ0.", 0.5
    )
    ema_decay: float = _help("online_ema: θ_ema ← d·θ_ema + (1 − d)·θ after every optimizer step (FiF: 0.999).",
                             0.999)
    lines: dict | None = _help(
        "LiNeS depth scaling {alpha, beta} of every merge's task vector (task-vector operators only); null = off.",
        None
    )
    save_history: bool = _help(
        "Write every task's end weights to <run>/history/ even when no merge needs them (for `fif merge --run`).",
        False
    )

    def __post_init__(self) -> None:
        if self.preset is not None:
            if self.preset not in MERGE_PRESETS:
                close = difflib.get_close_matches(str(self.preset), list(MERGE_PRESETS), n=2, cutoff=0.5)
                hint = f"; did you mean {' or '.join(close)}?" if close else ""
                raise ValueError(f"preset {self.preset!r} is unknown{hint or '.'} Valid: {', '.join(MERGE_PRESETS)}")
            for key, value in MERGE_PRESETS[self.preset].items():
                if getattr(self, key) is None:
                    setattr(self, key, value)
        self.init = "last" if self.init is None else self.init
        self.deploy = "last" if self.deploy is None else self.deploy


@dataclass
class CheckpointConfig:
    every_steps: int = _help(
        "Checkpoint every N optimizer steps within a task (0 = only at task ends, which always checkpoint).", 500
    )
    keep_last: int = _help("Checkpoints kept in <run>/checkpoints (older ones pruned); >= 2 keeps a fallback.", 2)


@dataclass
class GuardConfig:
    max_bad_steps: int = _help(
        "Roll back to the last checkpoint after this many consecutive non-finite steps (0 = only skip them).", 10
    )
    lr_factor: float = _help("On rollback, multiply the learning rate by this for the rest of the run.", 0.5)
    max_rollbacks: int = _help("Give up (error) after this many rollbacks in one run.", 3)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)

    def to_dict(self) -> dict:
        return to_dict(self)


# ----------------------------------------------------------------------------------------------
# Presets and overrides


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_yaml(path: str | Path) -> dict:
    """Parse a YAML mapping safely (no code execution).

    Raises:
        ConfigError: the file is missing, not YAML, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file {str(path)!r} does not exist"])
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: not valid YAML: {e}"]) from e
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections (run, model, data, ...)"])
    return data


def preset_dict(name: str) -> dict:
    """The raw mapping of preset ``name`` (or of a YAML file path)."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        return read_yaml(name)
    if name not in preset_names():
        close = difflib.get_close_matches(name, preset_names(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError([f"unknown preset {name!r}{hint} Valid presets: {', '.join(preset_names())}"])
    return read_yaml(PRESET_DIR / f"{name}.yaml")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.lr=1e-4'`` → (['train', 'lr'], 0.0001). Values are parsed as YAML scalars/lists."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError([f"override {text!r} is not of the form section.key=value"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of ``data`` with each dotted override set (method options go to method.options)."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        if path[0] == "method" and len(path) >= 2 and path[1] not in ("name", "options"):
            path = ["method", "options", *path[1:]]
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return data


def load_config(preset: str | None = "mini", overrides: list[str] | None = None, base: dict | None = None) -> Config:
    """Resolve a preset (name or YAML path) plus overrides into a validated :class:`Config`.

    Args:
        preset: preset name (see :func:`preset_names`), a YAML path, or None for the defaults.
        overrides: dotted ``section.key=value`` strings, applied in order.
        base: a raw mapping used instead of the preset (e.g. a saved run's config.yaml).

    Raises:
        ConfigError: listing every problem at once.
    """
    data = dict(base) if base is not None else (preset_dict(preset) if preset else {})
    data = apply_overrides(data, overrides or [])
    problems: list[str] = []
    cfg = from_dict(Config, data, "", problems)
    if not problems:
        problems.extend(validate(cfg))
    if problems:
        raise ConfigError(problems, source=f"preset {preset!r}" if preset and base is None else "")
    return cfg


# ----------------------------------------------------------------------------------------------
# Typed conversion


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str, problems: list[str]) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
            return tp()
        return from_dict(tp, value, key, problems)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            problems.append(f"{key}: must not be null (expected {_type_name(tp)})")
            return None
        for arg in args:
            if arg is type(None):
                continue
            sub: list[str] = []
            out = _convert(arg, value, key, sub)
            if not sub:
                return out
        problems.append(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is Literal:
        if value not in get_args(tp):
            problems.append(f"{key}: {value!r} is not one of {_type_name(tp)}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        problems.append(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and math.isfinite(number):
            return number
        problems.append(f"{key}: expected a finite number, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        problems.append(f"{key}: expected a string, got {value!r}")
        return value
    if tp in (list, tuple) or origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        problems.append(f"{key}: expected a list, got {value!r}")
        return value
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        problems.append(f"{key}: expected a mapping, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict, prefix: str, problems: list[str]) -> Any:
    """Build dataclass ``cls`` from ``data``, appending every problem (with its dotted key) to ``problems``."""
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            where = f"section {prefix!r}" if prefix else "the top level"
            problems.append(f"{path}: unknown key in {where}{hint} Valid keys: {', '.join(names)}")
            continue
        kwargs[key] = _convert(hints[key], value, path, problems)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        problems.append(f"{prefix or 'config'}: {e}")
        return cls()


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def field_help(cls: type = Config, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted key, help, default) for every leaf field, for `--help` style listings."""
    rows = []
    for f in dataclasses.fields(cls):
        tp = get_type_hints(cls)[f.name]
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(tp):
            rows.extend(field_help(tp, key))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            rows.append((key, f.metadata.get("help", ""), default))
    return rows


# ----------------------------------------------------------------------------------------------
# Cross-field validation


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
    e = cfg.eval
    if e.batch_size < 1:
        p.append("eval.batch_size: must be >= 1")
    if not 0 < e.subset_frac <= 1:
        p.append(f"eval.subset_frac: {e.subset_frac} must be in (0, 1]")
    if e.every_steps < 0:
        p.append(f"eval.every_steps: {e.every_steps} must be >= 0 (0 = no evaluation inside tasks)")
    if e.precision not in ("auto", "fp32", "bf16", "fp16"):
        p.append(f"eval.precision: {e.precision!r} is not one of auto, fp32, bf16, fp16")
    if cfg.log.wandb_mode not in ("offline", "online", "disabled"):
        p.append(f"log.wandb_mode: {cfg.log.wandb_mode!r} is not one of offline, online, disabled")
    if cfg.run.threads < 0:
        p.append("run.threads: must be >= 0")
    p.extend(_validate_reliability(cfg.checkpoint, cfg.guard))
    p.extend(_validate_method(cfg))
    p.extend(_validate_merge(cfg.merge))
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
    """Problems with train.distributed (the device and world size are checked at launch, fif.distributed)."""
    from fif.distributed import FSDP_MESSAGE, MODES

    if t.distributed == "fsdp":
        return [FSDP_MESSAGE]
    p = _choice("train.distributed", t.distributed, MODES)
    if t.distributed != "none" and t.grad_accum_steps > 1:
        p.append(
            f"train.grad_accum_steps={t.grad_accum_steps} with train.distributed={t.distributed}: not supported; more "
            "processes already split the batch (use train.grad_accum_steps=1, or train.distributed=none)"
        )
    if t.dist_timeout_minutes <= 0:
        p.append(f"train.dist_timeout_minutes: {t.dist_timeout_minutes} must be > 0")
    return p


def _validate_stream(s: StreamConfig) -> list[str]:
    from fif.data.stream import DIFFICULTY_SPLITS, ORDERINGS, REFERENCES

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


def _validate_method(cfg: Config) -> list[str]:
    from fif.methods import method_config_problems

    return method_config_problems(cfg.method.name, cfg.method.options)


def _validate_merge(m: MergeConfig) -> list[str]:
    from fif.merge.temporal import merge_config_problems

    return merge_config_problems(m)


_ = typing  # keep typing importable for get_type_hints on string annotations
