"""Run setup: everything a run builds once, before its first task.

:func:`setup` reads a validated :class:`Config` and returns the run's :class:`~fif.runner.spec.RunSpec`
(benchmark, base model, method, tasks, evaluator, temporal merger, event channel) and its
:class:`~fif.runner.state.RunState` before the first task (budget ledger, measured step costs);
:func:`prepare_out_dir` creates and locks the run folder. The stream loop that uses them: :mod:`fif.runner.stream`; each task's work:
:mod:`fif.runner.task`.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from fif.budget import Layout, Ledger, mafs_per_step, measure_step_cost, run_budget_mafs
from fif.budget.mafs import steps_for_task
from fif.config import Config
from fif.config.components import clip_loss_from_config, eval_workers, ordering_options
from fif.config.composition import merge_for_method
from fif.core.device import resolve_device, resolve_precision
from fif.core.finite import NonFiniteWeightsError, all_finite, checked_tensors, describe_nonfinite, nonfinite_counts
from fif.core.io import explained_write
from fif.core.version import __version__
from fif.data.bad_samples import BadSampleLog
from fif.data.loader import PersistentLoader
from fif.data.mixture import Pool
from fif.data.pool import load_pool
from fif.data.registry import Benchmark, benchmark_options, get_benchmark
from fif.data.stream import MODEL_ORDERINGS, Task, build_tasks
from fif.eval.concepts import ModelScorer
from fif.eval.zeroshot import Evaluator
from fif.methods import build_method, freeze_all_but
from fif.methods.finetune import Finetune
from fif.model.checkpointing import compile_towers_
from fif.model.clip import Clip, ModelLoadError, build_clip, resolve_weights
from fif.results.events import EventLog
from fif.runner.checkpoint import CHECKPOINT_DIR
from fif.runner.folder import RunLock, StopSignals
from fif.runner.merger import HISTORY_DIR, FollowerMerger, TemporalMerger
from fif.runner.spec import EVENTS_FILE, RunEvents, RunSpec
from fif.runner.state import RunState
from fif.train.distributed import Ranks, Solo
from fif.train.loop import batchnorm_accumulation_warning, enable_grad_checkpointing
from fif.train.pretrain import ensure_base_model, recipe_for

log = logging.getLogger(__name__)

MINI_BASE = "mini-base"  # model.pretrained value: build (or reuse) the cached mini base model


class RunFolderError(FileExistsError):
    """The run folder exists and neither overwrite nor resume was asked for, or it is not fif's to replace."""


# What fif writes into a run folder; `--overwrite` removes these and nothing else.
RUN_MARKER = "run.json"  # written first, with fif's provenance: what makes a folder a fif run folder
RUN_ENTRIES = frozenset({
    RUN_MARKER, "config.yaml", EVENTS_FILE, "summary.json", "final.safetensors", CHECKPOINT_DIR, HISTORY_DIR,
    "tensorboard", "wandb", "report", RunLock.NAME,
})


def default_out_dir(cfg: Config, root: str | Path = "runs") -> Path:
    """``runs/<time>-<benchmark>-<method>[-<merge>]`` (the name only; :func:`claim_default_out_dir` creates it)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    bench = Path(cfg.data.benchmark).stem if cfg.data.benchmark.endswith((".yaml", ".yml")) else cfg.data.benchmark
    merge = cfg.merge.preset if cfg.merge.preset not in (None, "none") else None
    return Path(root) / "-".join(filter(None, [stamp, bench, cfg.method.name, merge]))


def claim_default_out_dir(cfg: Config, root: str | Path = "runs") -> Path:
    """Create a new, empty run folder named by :func:`default_out_dir`; runs started in the same second get
    ``-2``, ``-3``, ... (``mkdir`` is atomic, so two processes never claim the same name).

    Raises:
        StorageError: ``root`` cannot be written.
    """
    base = default_out_dir(cfg, root)
    with explained_write(base):
        base.parent.mkdir(parents=True, exist_ok=True)
        for n in range(1, 10_000):
            path = base if n == 1 else base.with_name(f"{base.name}-{n}")
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    raise RunFolderError(f"no free run folder name like {str(base)!r}; give --out")


def is_run_folder(path: Path) -> bool:
    """A folder fif made: its ``run.json`` is a JSON object with fif's provenance (``fif_version``)."""
    try:
        info = json.loads((Path(path) / RUN_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and "fif_version" in info


def never_started(path: Path) -> bool:
    """A run folder whose setup never finished (killed): no event, checkpoint or result in it yet."""
    path = Path(path)
    events = path / EVENTS_FILE
    return (not (events.is_file() and events.stat().st_size) and not any((path / CHECKPOINT_DIR).glob("task*"))
            and not (path / "summary.json").exists() and not (path / "final.safetensors").exists())


def _fif_entry(name: str) -> bool:
    return name in RUN_ENTRIES or (name.startswith(".") and name.endswith(".tmp"))  # atomic writes' temp files


def prepare_out_dir(out_dir: Path, overwrite: bool) -> RunLock:
    """Create and lock the run folder. An existing folder is used only if it is empty, a fif run folder whose
    setup never finished (killed), or, with ``overwrite``, a fif run folder holding nothing but fif's own
    files; those files are removed. Nothing else is ever deleted.

    Returns:
        The held lock (release it when the run ends).

    Raises:
        RunFolderInUseError: another fif process works in the folder.
        RunFolderError: the folder holds a run and ``overwrite`` is False, is not a fif run folder, or holds
            files fif did not write.
        StorageError: the folder cannot be created or written (read-only, no permission).
    """
    existed, had_lock = out_dir.exists(), (out_dir / RunLock.NAME).exists()
    lock = RunLock(out_dir).acquire()
    try:
        entries = [p for p in out_dir.iterdir() if p.name != RunLock.NAME]
        if entries:
            check_replaceable(out_dir, entries, overwrite)
            for entry in entries:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    except BaseException:
        lock.release()
        if not existed:
            shutil.rmtree(out_dir, ignore_errors=True)
        elif not had_lock:
            lock.path.unlink(missing_ok=True)
        raise
    return lock


def check_replaceable(out_dir: Path, entries: list[Path], overwrite: bool) -> None:
    """Raise unless the non-empty ``out_dir`` may be emptied for a new run (see :func:`prepare_out_dir`)."""
    if not is_run_folder(out_dir):
        raise RunFolderError(
            f"{str(out_dir)!r} exists and does not look like a fif run folder (no {RUN_MARKER} with fif's provenance)"
            f"; {'--overwrite only replaces fif run folders, and ' if overwrite else ''}fif never deletes what it did "
            f"not write: choose another --out"
        )
    foreign = sorted(p.name + ("/" if p.is_dir() else "") for p in entries if not _fif_entry(p.name))
    if foreign:
        raise RunFolderError(
            f"run folder {str(out_dir)!r} also holds {', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}, "
            f"which fif did not write; move {'it' if len(foreign) == 1 else 'them'} out or choose another --out"
        )
    if never_started(out_dir):
        log.warning(f"{out_dir}: a run whose setup never finished (killed?) left this folder; starting it afresh")
    elif not overwrite:
        raise RunFolderError(
            f"run folder {str(out_dir)!r} already exists; pass --overwrite to replace it, "
            f"--resume {out_dir} to continue it, or choose another --out"
        )


def load_model(
    cfg: Config, device: torch.device, on_event: Callable[[dict], None] | None = None, progress: bool = False
) -> Clip:
    """Build the base model; ``model.pretrained=mini-base`` builds/caches the mini base model first."""
    pretrained = cfg.model.pretrained
    if pretrained == MINI_BASE:

        spec = recipe_for(cfg.model.arch, cfg.data.benchmark)
        if on_event:
            on_event({"event": "base_model", "status": "checking", "arch": cfg.model.arch})
        bar = None
        if progress:

            bar = tqdm(total=spec.steps, desc="base model", leave=False, unit="step")

        def on_log(step: int, loss: float) -> None:
            if bar is not None:
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{loss:.3f}")

        try:
            path, built = ensure_base_model(cfg.run.cache_dir, spec, cfg.data.options, device, on_log=on_log)
        finally:
            if bar is not None:
                bar.close()
        if on_event:
            on_event({"event": "base_model", "status": "built" if built else "cached", "path": str(path)})
        try:
            return build_clip(cfg.model.arch, pretrained=str(path), device=device, attention=cfg.model.attention)
        except ModelLoadError as e:  # a cache file damaged since it was written (disk, copy, a killed rsync)
            raise ModelLoadError(
                f"the cached base model {path} cannot be loaded ({e}); delete it, or rebuild it with "
                f"fif pretrain --force --preset ... (the same model.arch and data.options)"
            ) from e
    return build_clip(cfg.model.arch, pretrained=pretrained, device=device, attention=cfg.model.attention)


def setup(
    cfg: Config,
    out_dir: Path,
    on_event: Callable[[dict], None] | None = None,
    progress: bool = False,
    ranks: Ranks | Solo | None = None,
    stop: StopSignals | None = None,
) -> tuple[RunSpec, RunState]:
    """Build benchmark, model, method, tasks, budget and evaluator for a run (no training yet).

    Builds only what this process needs: on ranks other than 0 the event channel is silent and the
    temporal merger a :class:`FollowerMerger` (rank 0 writes the run folder). Every collective of a
    data-parallel run comes after (:func:`fif.runner.distributed.share_plan`).

    Args:
        cfg: a validated config.
        out_dir: the run folder (events.jsonl and the merge history go there).
        on_event / progress: as for :func:`fif.runner.stream.run` (rank 0 only).
        ranks: this process's place in the world (None: one process, :class:`Solo`).
        stop: the run's SIGINT/SIGTERM handler, if any.

    Returns:
        The run's spec and its state before the first task.

    Raises:
        ValueError, KeyError, ConfigError, BudgetError: bad data, names or budget, before any result is written.
    """
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)  # all global RNGs: a run does not depend on what its process did before
    np.random.seed(cfg.run.seed)
    random.seed(cfg.run.seed)
    ranks = Solo() if ranks is None else ranks
    main = ranks.is_main  # rank 0 alone writes, prints and merges
    device = resolve_device(cfg.run.device)
    precision = resolve_precision(cfg.train.precision, device)
    # The data first (the fast part of `fif data check`): a missing folder, pool or stream file fails
    # here, before the model is built or downloaded.
    benchmark = get_benchmark(cfg.data.benchmark, **benchmark_options(cfg.data.options, cfg.data.root))
    pretraining_pool = load_pretraining_pool(cfg, benchmark)
    orderings = ordering_options(cfg.stream, cfg.eval.batch_size, precision)
    needs_model = cfg.stream.ordering in MODEL_ORDERINGS
    tasks = None if needs_model else _tasks(cfg, benchmark, None, orderings)
    if cfg.model.pretrained != MINI_BASE:  # an unusable model source (not cached, offline) fails in seconds
        resolve_weights(cfg.model.arch, cfg.model.pretrained)
    clip = load_model(cfg, device, on_event if main else None, progress and main)
    check_finite_base(cfg, clip)
    if needs_model:  # the similarity and easy-to-hard orderings embed and score with the base model
        tasks = _tasks(cfg, benchmark, ModelScorer(clip, device, orderings), orderings)
    accounting = cfg.budget.accounting  # both steps priced alike: the multiplier and the budget stay consistent
    # The multiplier's figure is one device at the whole global batch (MAFs do not depend on the number
    # of GPUs); ``layout`` adds what each device of this run holds (docs/budget.md, per-device peak).
    memory_device = torch.device("meta") if cfg.budget.memory == "estimate" else device
    layout = run_layout(cfg, ranks.world_size)
    reference_cost = measure_step_cost(clip, Finetune(clip, None), cfg.train.batch_size, memory_device,
                                       accounting=accounting, layout=layout)
    method = build_method(cfg.method.name, cfg.method.options, clip, clip_loss_from_config(cfg.train))
    freeze_all_but(clip.model, method.trainable_parameters())
    step_cost = measure_step_cost(clip, method, cfg.train.batch_size, memory_device, accounting=accounting,
                                  layout=layout)
    if cfg.train.grad_checkpointing:  # after measuring: the budget charges the method, not the memory trick
        enable_grad_checkpointing(clip.model)
    if compiles(cfg, device):  # after measuring (meta copies) and checkpointing; once per run, for every task
        compile_towers_(clip.model)
    if (warning := batchnorm_accumulation_warning(clip.model, cfg.train.grad_accum_steps)) is not None:
        log.warning(warning)
    total = run_budget_mafs(cfg.budget.ft_steps, cfg.budget.mafs, reference_cost)
    ledger = Ledger.for_run(total, max(len(tasks), 1), accounting)  # zeroshot reference: no task, nothing spent
    if tasks:  # fail before any result is written, not at the first task
        steps_for_task(min(t.budget_mafs for t in ledger.tasks), mafs_per_step(step_cost, reference_cost))
    evaluator = Evaluator(
        benchmark, cfg.eval.datasets, cfg.eval.batch_size, cfg.eval.subset_frac, cfg.eval.min_samples,
        cfg.eval.ensemble, seed=cfg.run.seed, num_workers=eval_workers(cfg.eval, cfg.data),
    )
    merge_cfg, note = merge_for_method(cfg.merge, cfg.method.name)  # a method's own start weights win
    if note is not None and main:
        log.warning(note)
    merger = TemporalMerger(
        merge_cfg, out_dir / HISTORY_DIR, clip.model, method.deploy_weights,
        {"fif_version": __version__, "arch": cfg.model.arch, "seed": str(cfg.run.seed)},
    ) if main else FollowerMerger()
    path = out_dir / EVENTS_FILE
    events = RunEvents(path, EventLog(path), on_event) if main else RunEvents(path, None)
    spec = RunSpec(
        cfg, out_dir, device, precision, benchmark, clip, method, tuple(tasks), evaluator, pretraining_pool, merger,
        events, ranks, stop, progress and main, PersistentLoader(cfg.data.num_workers, pin_memory=device.type == "cuda"),
    )
    return spec, RunState(ledger, step_cost, reference_cost, bad_samples=BadSampleLog(cfg.data.max_bad_samples))


def compiles(cfg: Config, device: torch.device) -> bool:
    """``train.compile``, or by default: on CUDA, not on CPU (where compiling costs more than it saves on a
    short run) and not under fsdp (compiled towers are not tested sharded)."""
    if cfg.train.compile is not None:
        return cfg.train.compile
    return device.type == "cuda" and cfg.train.distributed != "fsdp"


def run_layout(cfg: Config, world_size: int) -> Layout:
    """How this run lays a step out: ``world_size`` ranks (sharded under ``train.distributed=fsdp``), its
    micro-batches and recomputation."""
    return Layout(world_size, cfg.train.grad_accum_steps, cfg.train.grad_checkpointing,
                  "fsdp" if cfg.train.distributed == "fsdp" else "none")


def _tasks(cfg: Config, benchmark: Benchmark, scorer: ModelScorer | None, orderings) -> list[Task]:
    s = cfg.stream
    return build_tasks(benchmark, s.ordering, s.tasks, seed=cfg.run.seed, reverse=s.reverse, file=s.file,
                       datasets=s.datasets, reference=s.reference, scorer=scorer, options=orderings)


def check_finite_base(cfg: Config, clip: Clip) -> None:
    """Refuse a base model with NaN/inf weights: every task would start from it.

    Raises:
        NonFiniteWeightsError: naming the weights and how many values are not finite.
    """
    state = clip.model.state_dict()
    if bool(all_finite(checked_tensors(state))):  # sync: once per run
        return
    fix = ("the cached mini base model is broken: delete it or run fif pretrain --force" if cfg.model.pretrained
           == MINI_BASE else "give finite weights")
    raise NonFiniteWeightsError(
        f"model.pretrained: the base model {cfg.model.pretrained!r} holds {describe_nonfinite(nonfinite_counts(state))}; "
        f"{fix}"
    )


def load_pretraining_pool(cfg: Config, benchmark: Benchmark) -> Pool | None:
    """The pretraining pool the mixture draws from, or None when ``data.mixture.pretraining`` is 0.

    Raises:
        ValueError: pretraining samples are asked for but the benchmark has no pool and none is named.
    """
    if cfg.data.mixture.pretraining <= 0:
        return None
    pool_name = cfg.data.mixture.pool or benchmark.pretraining_pool
    if not pool_name:
        raise ValueError(
            f"data.mixture.pretraining={cfg.data.mixture.pretraining} but benchmark {benchmark.name!r} has no "
            "pretraining pool; set data.mixture.pool or data.mixture.pretraining=0"
        )
    pool_data = load_pool(benchmark, pool_name, index_dir=Path(cfg.run.cache_dir).expanduser() / "wds_index")
    return Pool([(pool_data, np.arange(len(pool_data)))])
