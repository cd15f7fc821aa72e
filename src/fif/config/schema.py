"""The typed configuration tree: one dataclass per section, the :class:`Config` that holds them, and the
valid choices some fields take.

Field help lives in each field's ``metadata["help"]`` (see :func:`fif.config.load.field_help`). Converting
raw mappings into these classes and validating them: :mod:`fif.config.load`, :mod:`fif.config.validate`.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any, Literal


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
    num_workers: int = _help(
        "DataLoader worker processes that build training batches ahead, started once per run (0 = in the main "
        "process). Batches do not depend on it.", 0
    )
    max_bad_samples: int = _help(
        "Unreadable images (undecodable or missing, in a dataset or the pool) a run skips, each replaced by the "
        "next readable sample of its class, warned about and counted in events.jsonl and summary.json; one more "
        "stops the run with the list of files.", 10
    )
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
    schedule: str = _help("Learning-rate schedule (see fif.train.schedules).", "cosine")
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
    compile: bool | None = _help(
        "torch.compile the image tower and text transformer (training and evaluation): null = on CUDA, off on "
        "CPU (compiling takes minutes; it pays off on GPU runs).", None
    )
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
BUDGET_MEMORY = ("auto", "estimate")
TEMPERATURES = ("learnable", "fixed")


@dataclass
class BudgetConfig:
    ft_steps: float | None = _help(
        "Whole-stream budget in full fine-tuning steps at train.batch_size (FiF: 28,400 at batch 512).", 28400
    )
    mafs: float | None = _help("Whole-stream budget in absolute MAFs (overrides ft_steps).", None)
    accounting: str = _help(
        "How a step is priced: 'exact' (what fif computes; a task hook such as EWC's Fisher pass charged once per "
        "task) or 'paper' (FiF Tab. 4's count: a fused attention backward also recomputes QK^T, a task pass is "
        "charged to every step, adapters as the reference merged them). See docs/budget.md.", "exact"
    )
    memory: str = _help(
        "Peak memory of the MAF multiplier (one device, the whole train.batch_size): 'auto' (measured on CUDA, "
        "estimated on CPU) or 'estimate' (estimated on the meta device everywhere, e.g. when a step at the "
        "global batch does not fit on one GPU).", "auto"
    )


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
    num_workers: int | None = _help(
        "DataLoader worker processes that decode evaluation images ahead, started once per run (null = "
        "data.num_workers; 0 = in the main process). Scores do not depend on it.", None
    )


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
    defaults: dict = _help(
        "A preset's default options per method ({name: {option: value}}): the chosen method starts from its entry, "
        "and method.<option> values win (the fif preset: FiF's 50,000-sample EWC/MAS passes).", factory=dict
    )


# The reference's recipes (facts §10, docs/merging.md). "ema" is the unrolled running merge
# r ← merge(θ_t, r) from r_0 = θ0 (½/½ at merge.alpha=0.5), "all" one merge of every task checkpoint.
MERGE_PRESETS: dict[str, dict[str, Any]] = {
    "none": {"init": "last", "deploy": "last"},
    "zs_merge": {"init": "zeroshot", "deploy": "ema"},  # ZS-merge (zs_paint): tasks from θ0, deploy unrolled
    "ft_merge": {"init": "last", "deploy": "last_zeroshot"},  # FT-merge (ft_paint): merge(latest, θ0)
    "ema_merge": {"init": "ema", "deploy": "ema"},  # EMA-merge (ema_paint) = TIME's best
    "online_ema": {"init": "online_ema", "deploy": "online_ema"},  # ema_online_paint: θ_ema ← d·θ_ema + (1 − d)·θ
    "offline_merge": {"init": "zeroshot", "deploy": "all"},  # tasks from θ0, one merge by merge.weights
}


@dataclass
class MergeConfig:
    preset: str | None = _help(
        "Shorthand for the axes: none, zs_merge, ft_merge, ema_merge, online_ema, offline_merge; keys set "
        "explicitly win over the preset's. A method that owns its start weights (gdumb, ewc, ...) keeps them "
        "over the preset's init.", None
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
        "cubic, fifth, tenth, exponential, log (newest heaviest), or <scheme>_reversed (oldest heaviest).", "uniform"
    )
    include_zero_shot: bool = _help(
        "init/deploy=all: merge θ0 too, as the oldest checkpoint (the reference's offline merge option).", False
    )
    alpha: float = _help(
        "Weight of the newest model when two are interpolated (or slerped): ema r ← α·θ_t + (1 − α)·r; "
        "last_zeroshot α·θ_t + (1 − α)·θ0.", 0.5
    )
    ema_decay: float = _help("online_ema: θ_ema ← d·θ_ema + (1 − d)·θ after every optimizer step (FiF: 0.999).",
                             0.999)
    lines: dict | None = _help(
        "LiNeS depth scaling {alpha, beta, schedule: linear|quadratic|sqrt} of every merge's task vector "
        "(task-vector operators only); null = off.",
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


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


_ = typing  # keep typing importable for get_type_hints on string annotations
