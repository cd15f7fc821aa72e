"""`fif update init`: a new lineage folder with the base weights (v1.0), the recipe and the manifest."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fif.budget import measure_step_cost
from fif.config import Config, dump_yaml, load_config
from fif.config.components import clip_loss_from_config
from fif.config.load import parse_override
from fif.core.device import resolve_device
from fif.core.io import atomic_write_bytes, atomic_write_json, atomic_write_text, safetensors_bytes
from fif.core.names import unknown_name_message
from fif.core.version import __version__
from fif.data.registry import benchmark_options, get_benchmark
from fif.methods import build_method
from fif.methods.finetune import Finetune
from fif.runner.setup import check_finite_base, load_model
from fif.update.lineage import (
    BASE,
    FORMAT,
    MANIFEST,
    MODEL_FILE,
    RECIPE,
    VERSION_FILE,
    VERSIONS,
    Lineage,
    LineageError,
    now,
)
from fif.update.plan import SETTINGS

# The paper's guidance for minor updates (FiF §5-§7): fine-tuning with an EMA merge, the autoregressive meta
# schedule, and batches mixing pretraining replay, the update's data and the buffer of earlier updates equally.
GUIDANCE = (
    "method.name=finetune", "merge.preset=ema_merge", "train.schedule=autoregressive_cosine",
    "data.mixture.pretraining=0.33", "data.mixture.update=0.34", "data.mixture.buffer=0.33",
)


def init(
    out: str | Path,
    recipe: str = "mini",
    arch: str | None = None,
    pretrained: str | None = None,
    overrides: list[str] | None = None,
    on_event: Callable[[dict], None] | None = None,
    progress: bool = False,
) -> Lineage:
    """Create a lineage: v1.0 holds the base weights; every update follows the recipe.

    Args:
        out: the new lineage folder (must not exist, or be empty).
        recipe: a preset name (``mini``, ``fif``) or a preset YAML; the paper's guidance (:data:`GUIDANCE`) is
            applied on top, then ``overrides``.
        arch / pretrained: ``model.arch`` and ``model.pretrained`` (an open_clip tag, a file, ``mini-base``).
        overrides: ``section.key=value`` for the recipe, and ``update.KEY=value`` for the lineage's settings
            (:data:`fif.update.plan.SETTINGS`: ft_steps, max_zs_drop, guard, pool, horizon, ...).
        on_event / progress: building the mini base model reports through them.

    Returns:
        The new lineage.

    Raises:
        LineageError: ``out`` holds something, or an unknown ``update.`` setting.
        ConfigError: a bad recipe or override.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LineageError(f"{out} exists and is not empty; choose another --out")
    settings_over = [o for o in overrides or [] if o.startswith("update.")]
    model_over = [f"model.arch={arch}"] * bool(arch) + [f"model.pretrained={pretrained}"] * bool(pretrained)
    cfg = load_config(recipe, [*GUIDANCE, *model_over, *[o for o in overrides or [] if not o.startswith("update.")]])
    bench_options = benchmark_options(cfg.data.options, cfg.data.root)
    settings = lineage_settings(cfg, settings_over, bench_options)
    device = resolve_device(cfg.run.device)
    clip = load_model(cfg, device, on_event, progress)
    check_finite_base(cfg, clip)
    accounting = cfg.budget.accounting  # priced as the runner's setup prices them
    costs = {"reference": measure_step_cost(clip, Finetune(clip, None), cfg.train.batch_size, device,
                                            accounting=accounting).to_dict()}
    method = build_method(cfg.method.name, cfg.method.options, clip, clip_loss_from_config(cfg.train))
    costs["step"] = measure_step_cost(clip, method, cfg.train.batch_size, device, accounting=accounting).to_dict()
    weights = {k: v.detach().cpu().contiguous() for k, v in clip.model.state_dict().items()}

    tmp = out.with_name(f".{out.name}.init.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    base = tmp / VERSIONS / BASE
    base.mkdir(parents=True)
    atomic_write_bytes(base / MODEL_FILE, safetensors_bytes(weights, {"fif_version": __version__, "arch": cfg.model.arch}))
    final_weights = (out / VERSIONS / BASE / MODEL_FILE).resolve()
    resolved = load_config(None, [], base={**cfg.to_dict(), "model": {**cfg.to_dict()["model"],
                                                                        "pretrained": str(final_weights)}})
    atomic_write_text(tmp / RECIPE, dump_yaml(resolved))
    atomic_write_json(base / VERSION_FILE, {
        "version": BASE, "parent": None, "status": "base", "created": now(), "metrics": None,
        "model": {"arch": cfg.model.arch, "pretrained": cfg.model.pretrained},
    })
    atomic_write_json(tmp / MANIFEST, {
        "format": FORMAT, "fif_version": __version__, "created": now(), "recipe": recipe,
        "overrides": list(overrides or []), "benchmark": cfg.data.benchmark, "benchmark_options": bench_options,
        "settings": settings, "costs": costs, "deployed": BASE, "pointer_log": [],
    })
    if out.exists():
        out.rmdir()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return Lineage.open(out)


def lineage_settings(cfg: Config, overrides: list[str], bench_options: dict) -> dict[str, Any]:
    """The lineage's settings: defaults from the recipe, then ``update.KEY=value`` overrides.

    Raises:
        LineageError: an unknown key, or a guard / pool the recipe's benchmark does not have.
    """
    bench = get_benchmark(cfg.data.benchmark, **bench_options)
    eval_only = [s.name for s in bench.eval_only]
    guard = [n for n in cfg.eval.datasets if n in eval_only] if cfg.eval.datasets else eval_only
    tasks = max(cfg.stream.tasks, 1)
    if cfg.budget.ft_steps is None:
        raise LineageError("budget: a lineage budgets each update in full fine-tuning steps; set budget.ft_steps "
                           "(the recipe's budget is split over stream.tasks) or update.ft_steps")
    settings: dict[str, Any] = {
        "ft_steps": float(cfg.budget.ft_steps) / tasks, "max_zs_drop": 1.0, "guard": guard,
        "pool": (cfg.data.mixture.pool or bench.pretraining_pool) if cfg.data.mixture.pretraining > 0 else None,
        "horizon": tasks, "major_zs_drop": 3.0, "max_held": 2, "max_dataset_drop": None, "backfill": True,
    }
    for text in overrides:
        path, value = parse_override(text)
        key = ".".join(path[1:])
        if key not in SETTINGS:
            raise LineageError(unknown_name_message("lineage setting", f"update.{key}", [f"update.{k}" for k in SETTINGS]))
        settings[key] = value
    for name in settings["guard"]:
        if name not in eval_only:
            raise LineageError(unknown_name_message("guard set (update.guard)", name, eval_only,
                                                    where=f"the eval-only datasets of {cfg.data.benchmark}"))
    if not settings["guard"]:
        raise LineageError(f"benchmark {cfg.data.benchmark} has no eval-only dataset to guard retention with")
    per_set = settings["max_dataset_drop"]
    if per_set is not None and (isinstance(per_set, bool) or not isinstance(per_set, (int, float))):
        raise LineageError(f"update.max_dataset_drop={per_set!r}: give a number of points (e.g. 5), or null for no "
                           "per-set threshold")
    if not isinstance(settings["backfill"], bool):
        raise LineageError(f"update.backfill={settings['backfill']!r}: give true or false")
    return settings
