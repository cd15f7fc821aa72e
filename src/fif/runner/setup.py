"""Run setup: everything a run builds once, before its first task.

:func:`setup` reads a validated :class:`Config` and returns the run's :class:`~fif.runner.spec.RunSpec`
(benchmark, base model, method, tasks, evaluator, temporal merger, event channel) and its
:class:`~fif.runner.state.RunState` before the first task (budget ledger, measured step costs);
:func:`prepare_out_dir` creates and locks the run folder. The stream loop that uses them: :mod:`fif.runner.stream`; each task's work:
:mod:`fif.runner.task`.
"""

from __future__ import annotations

import logging
import random
import shutil
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from fif.budget import Ledger, mafs_per_step, measure_step_cost, run_budget_mafs
from fif.budget.mafs import steps_for_task
from fif.config import Config
from fif.config.components import clip_loss_from_config, eval_workers, ordering_options
from fif.config.composition import merge_for_method
from fif.core.device import resolve_device, resolve_precision
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
from fif.model.clip import Clip, build_clip, resolve_weights
from fif.results.events import EventLog
from fif.runner.folder import RunLock, StopSignals
from fif.runner.merger import HISTORY_DIR, FollowerMerger, TemporalMerger
from fif.runner.spec import EVENTS_FILE, RunEvents, RunSpec
from fif.runner.state import RunState
from fif.train.distributed import Ranks, Solo
from fif.train.loop import batchnorm_accumulation_warning, enable_grad_checkpointing
from fif.train.pretrain import PretrainSpec, ensure_base_model

log = logging.getLogger(__name__)

MINI_BASE = "mini-base"  # model.pretrained value: build (or reuse) the cached mini base model


class RunFolderError(FileExistsError):
    """The run folder exists and neither overwrite nor resume was asked for."""


def default_out_dir(cfg: Config, root: str | Path = "runs") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    bench = Path(cfg.data.benchmark).stem if cfg.data.benchmark.endswith((".yaml", ".yml")) else cfg.data.benchmark
    merge = cfg.merge.preset if cfg.merge.preset not in (None, "none") else None
    return Path(root) / "-".join(filter(None, [stamp, bench, cfg.method.name, merge]))


def prepare_out_dir(out_dir: Path, overwrite: bool) -> RunLock:
    """Create and lock the run folder; refuse an existing non-empty one unless ``overwrite``.

    Returns:
        The held lock (release it when the run ends).

    Raises:
        RunFolderInUseError: another fif process works in the folder.
        RunFolderError: the folder holds something and ``overwrite`` is False, or is not a fif run folder.
    """
    existed, had_lock = out_dir.exists(), (out_dir / RunLock.NAME).exists()
    lock = RunLock(out_dir).acquire()
    try:
        entries = [p for p in out_dir.iterdir() if p.name != RunLock.NAME]
        if entries:
            if not overwrite:
                raise RunFolderError(
                    f"run folder {str(out_dir)!r} already exists; pass --overwrite to replace it, "
                    f"--resume {out_dir} to continue it, or choose another --out"
                )
            if not (out_dir / "events.jsonl").exists() and not (out_dir / "config.yaml").exists():
                raise RunFolderError(f"refusing to overwrite {str(out_dir)!r}: it does not look like a fif run folder")
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


def load_model(
    cfg: Config, device: torch.device, on_event: Callable[[dict], None] | None = None, progress: bool = False
) -> Clip:
    """Build the base model; ``model.pretrained=mini-base`` builds/caches the mini base model first."""
    pretrained = cfg.model.pretrained
    if pretrained == MINI_BASE:

        spec = PretrainSpec(arch=cfg.model.arch, benchmark=cfg.data.benchmark)
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
        pretrained = str(path)
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
    if needs_model:  # the similarity and easy-to-hard orderings embed and score with the base model
        tasks = _tasks(cfg, benchmark, ModelScorer(clip, device, orderings), orderings)
    reference_cost = measure_step_cost(clip, Finetune(clip, None), cfg.train.batch_size, device)
    method = build_method(cfg.method.name, cfg.method.options, clip, clip_loss_from_config(cfg.train))
    freeze_all_but(clip.model, method.trainable_parameters())
    step_cost = measure_step_cost(clip, method, cfg.train.batch_size, device)
    if cfg.train.grad_checkpointing:  # after measuring: the budget charges the method, not the memory trick
        enable_grad_checkpointing(clip.model)
    if (warning := batchnorm_accumulation_warning(clip.model, cfg.train.grad_accum_steps)) is not None:
        log.warning(warning)
    total = run_budget_mafs(cfg.budget.ft_steps, cfg.budget.mafs, reference_cost)
    ledger = Ledger.for_run(total, max(len(tasks), 1))  # zeroshot reference: no task, the budget stays unspent
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


def _tasks(cfg: Config, benchmark: Benchmark, scorer: ModelScorer | None, orderings) -> list[Task]:
    s = cfg.stream
    return build_tasks(benchmark, s.ordering, s.tasks, seed=cfg.run.seed, reverse=s.reverse, file=s.file,
                       datasets=s.datasets, reference=s.reference, scorer=scorer, options=orderings)


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
