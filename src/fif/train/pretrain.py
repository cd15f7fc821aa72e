"""Build a base CLIP from scratch on a benchmark's pretraining pool (the "major update").

The mini benchmark has no downloadable CLIP, so ``fif pretrain`` (and ``fif run`` on first use) trains
the tiny architecture on the mini pretraining pool with the CLIP loss and caches the result, keyed by
everything that determines it (architecture, recipe, benchmark options, world version, the first step as the
code makes it, fif version).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import save

from fif.core.io import atomic_write_bytes
from fif.core.optim import OptimConfig, build_optimizer
from fif.core.version import __version__
from fif.data import mini
from fif.data.mixture import MixedBatches, MixtureCounts, MixtureSampler, Pool
from fif.data.registry import Benchmark, get_benchmark
from fif.data.specs import SplitData
from fif.methods.finetune import Finetune
from fif.model.clip import (
    COMPACT_VOCABULARY,
    build_clip,
    quiet_open_clip,
    register_fif_models,
    uses_compact_vocabulary,
)
from fif.model.vocab import read_vocabulary
from fif.train.loop import TrainingDivergedError, train_task
from fif.train.schedules import ScheduleSpec, task_curve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainSpec:
    """Recipe for building a base model from scratch (defaults: the mini benchmark's default architecture).

    The default is sized against the ``mini`` preset's stream (240 fine-tuning steps at batch 128): 1,500
    steps at batch 256 are 12.5 times its samples and FLOPs, so a stream nudges the base model rather than
    retraining it (FiF's streams are ~4e-4 of their base models' pretraining).
    """

    arch: str = "fif-mini-rn32"
    benchmark: str = "mini"
    steps: int = 1500
    batch_size: int = 256
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    seed: int = 0

    def key(self, benchmark_options: dict) -> str:
        """Cache key: a hash of the recipe, the benchmark options and the data/code versions."""

        world: dict = {}
        if self.benchmark == "mini":
            world = {"version": mini.WORLD_VERSION, "fingerprint": mini.world_fingerprint(**benchmark_options),
                     "first_step": first_step_fingerprint(self, mini.pool_sample(**benchmark_options))}
        payload = json.dumps({"spec": asdict(self), "arch": architecture_config(self.arch), "options": benchmark_options,
                              "world": world, "fif": __version__}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# The recipes of fif's tiny architectures where they differ from the default (docs/mini.md: what each reaches).
RECIPES: dict[str, PretrainSpec] = {
    "fif-mini-rn32": PretrainSpec(),
    "fif-mini-rn32-w2": PretrainSpec(arch="fif-mini-rn32-w2"),  # the model-scaling variant: same data and steps
    # A ViT from scratch wants a longer warmup (10 % of the steps); at half the peak lr (1e-3) it stayed
    # undertrained (final loss 1.68 vs the ResNet's 1.53, shape zero-shot 74 % in distribution). At the
    # ResNet's 1,500 steps it still ended above the ResNet's loss (world v4: 1.51 vs 1.41) and reached 79 % of
    # its A_ZS: a ViT has no convolutional prior and learns from more steps, so it trains twice as long.
    "fif-mini-vit32": PretrainSpec(arch="fif-mini-vit32", steps=3000, warmup_steps=300),
}


def recipe_for(arch: str, benchmark: str = "mini") -> PretrainSpec:
    """The pretraining recipe of ``arch`` on ``benchmark``: its entry in :data:`RECIPES`, else the default's."""
    return dataclasses.replace(RECIPES.get(arch, PretrainSpec()), arch=arch, benchmark=benchmark)


def architecture_config(arch: str) -> dict | None:
    """open_clip's config of ``arch`` (widths, layers, context length), so a changed architecture gets a new cache key.

    For fif's own architectures it also holds the compact vocabulary (a changed vocabulary changes token ids).
    """
    import open_clip  # heavy: every fif command would pay for it at start

    register_fif_models()
    config = open_clip.get_model_config(arch)
    if config is not None and uses_compact_vocabulary(arch):
        config = {**config, "fif_vocabulary": read_vocabulary(COMPACT_VOCABULARY)}
    return config


def first_step_fingerprint(spec: PretrainSpec, pool_data: SplitData) -> str:
    """A hash of what the recipe's first step starts from, as this fif's code makes it: the seeded initial
    weights of ``spec.arch`` and a first batch (pixels and token ids) drawn from ``pool_data`` the way
    :func:`pretrain` draws its batches. Part of the cache key, so that a code change which alters the
    initialisation, the batch draw, the augmentation or the tokenizer within one fif version builds a new
    base instead of reusing a stale one (the data itself is keyed by the world fingerprint). The global
    RNG is left as it was.
    """
    digest = hashlib.sha256()
    with torch.random.fork_rng(devices=[]), quiet_open_clip():
        torch.manual_seed(spec.seed)
        clip = build_clip(spec.arch, pretrained=None, device=torch.device("cpu"))
    for name, tensor in clip.model.state_dict().items():
        digest.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
    pool = Pool([(pool_data, np.arange(len(pool_data)))])
    sampler = MixtureSampler(MixtureCounts(0, min(spec.batch_size, len(pool_data)), 0), update=pool, seed=spec.seed,
                             task=0)
    batch = MixedBatches(sampler, clip.tokenize, clip.normalize, clip.image_size, 1)[0]
    digest.update(batch.images.numpy().tobytes() + batch.tokens.numpy().tobytes())
    return digest.hexdigest()[:16]


def pretrain(
    spec: PretrainSpec,
    benchmark: Benchmark,
    device: torch.device,
    on_log: Callable[[int, float], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Train ``spec.arch`` from random init on the benchmark's pretraining pool.

    Returns:
        The trained state dict (CPU tensors).

    Raises:
        ValueError: the benchmark has no pretraining pool.
        TrainingDivergedError: the weights became non-finite.
    """
    if not benchmark.pretraining_pool:
        raise ValueError(f"benchmark {benchmark.name!r} has no pretraining pool to build a base model from")
    torch.manual_seed(spec.seed)
    with quiet_open_clip():  # random init is the point here: open_clip's "no pretrained weights" is noise
        clip = build_clip(spec.arch, pretrained=None, device=device)
    method = Finetune(clip, None)
    pool_data = benchmark.load(benchmark.pretraining_pool, "train")
    pool = Pool([(pool_data, torch.arange(len(pool_data)).numpy())])
    sampler = MixtureSampler(MixtureCounts(0, spec.batch_size, 0), update=pool, seed=spec.seed, task=0)
    batches = MixedBatches(sampler, clip.tokenize, clip.normalize, clip.image_size, spec.steps)
    schedule = ScheduleSpec(name="cosine", lr=spec.lr, lr_min_ratio=0.01, warmup_frac=min(spec.warmup_steps, spec.steps - 1) / spec.steps)
    lr_curve = task_curve(schedule, 0, spec.steps, 1)
    optimizer = build_optimizer(method.trainable_parameters(), spec.lr, OptimConfig(weight_decay=spec.weight_decay))
    tlog = train_task(
        clip.model,
        method,
        optimizer,
        (batches[i] for i in range(spec.steps)),
        lambda s: float(lr_curve[s]),
        spec.steps,
        device,
        log_every=50,
        on_log=on_log,
    )
    if tlog.rollback:  # non-finite weights: never cache a broken base model
        raise TrainingDivergedError(
            f"building the base model {spec.arch} diverged (non-finite weights by step {tlog.steps}); nothing was "
            f"cached. Report this with your benchmark options."
        )
    return {k: v.detach().cpu().contiguous() for k, v in clip.model.state_dict().items()}


def base_model_path(cache_dir: str | Path, spec: PretrainSpec, benchmark_options: dict) -> Path:
    return Path(cache_dir).expanduser() / "base" / f"{spec.arch}-{spec.key(benchmark_options)}.safetensors"


def ensure_base_model(
    cache_dir: str | Path,
    spec: PretrainSpec = PretrainSpec(),
    benchmark_options: dict | None = None,
    device: torch.device | str = "cpu",
    force: bool = False,
    on_log: Callable[[int, float], None] | None = None,
) -> tuple[Path, bool]:
    """The cached base model for ``spec``, building it first if missing.

    Returns:
        (path to the safetensors file, whether it was built now).
    """


    options = dict(benchmark_options or {})
    path = base_model_path(cache_dir, spec, options)
    if path.is_file() and not force:
        return path, False
    log.info("building base model %s (%d steps) -> %s", spec.arch, spec.steps, path)
    benchmark = get_benchmark(spec.benchmark, **options)
    state = pretrain(spec, benchmark, torch.device(device), on_log=on_log)
    meta = {"fif_pretrain_spec": json.dumps(asdict(spec)), "benchmark_options": json.dumps(options, sort_keys=True)}
    atomic_write_bytes(path, save(state, metadata=meta))
    return path, True
