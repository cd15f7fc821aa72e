"""`fif update apply`: one update of a lineage, trained by the runner's own per-task path.

An update is the next task of one long run that the lineage keeps on disk between calls. Its run config is
the recipe with a stream of one task per update so far (``stream.ordering=dataset`` over the updates' data,
listed in a generated benchmark YAML beside the guard sets and the pretraining pool) and a budget of one
update's per task. The first update is :func:`fif.runner.stream.run` of that one-task stream; every later
one seeds a run folder with the deployed version's checkpoint (taken at its task boundary, the ledger given
one more task) and :func:`fif.runner.stream.resume`\\ s it, so the method's and the temporal merger's state,
the meta schedule's task index, the RNG streams and the buffer (the earlier tasks' data) are exactly what a
``fif run`` of the same stream would have at that task. A killed apply resumes from the run's own
checkpoints when run again.

The candidate is then evaluated (guard sets: retention; the updates' data: accumulation) and released only
if the retention gate passes; otherwise it is kept as a held version with a report of what regressed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fif.budget import StepCost, mafs_per_step
from fif.budget.mafs import steps_for_task
from fif.config import Config, dump_yaml, load_config, read_yaml
from fif.config.load import parse_override
from fif.core.io import CheckpointError, atomic_write_json, atomic_write_text
from fif.core.version import __version__
from fif.data.mixture import batch_counts
from fif.data.registry import get_benchmark
from fif.eval.metrics import stream_point
from fif.results.events import read_events
from fif.runner.checkpoint import CHECKPOINT_DIR, Position, latest_valid, load_checkpoint, save_checkpoint
from fif.runner.folder import FIXED_ON_RESUME, _matches
from fif.runner.merger import HISTORY_DIR
from fif.runner.setup import RUN_MARKER, is_run_folder
from fif.runner.spec import EVENTS_FILE
from fif.runner.state import is_finished
from fif.runner.stream import provenance, resume, run
from fif.update.lineage import (
    APPLY_DIR,
    BASE,
    MODEL_FILE,
    RECIPE,
    STATE_DIR,
    Lineage,
    LineageError,
    benchmark_doc,
    lock,
    now,
    rewrite_version,
    set_pointer,
    write_version,
)
from fif.update.plan import retention_gate
from fif.update.scores import backfill
from fif.update.sources import LineageDataError, UpdateData, resolve_source, verify

APPLY_FILE = "apply.json"
RUN_DIR = "run"
BENCHMARK_FILE = "benchmark.yaml"
# What makes a rerun the same apply (it then continues the interrupted one).
SAME_APPLY = ("parent", "ft_steps", "overrides", "data")
# Per-update overrides may change how this update trains (lr, schedule knobs, ...), not what the lineage is.
FIXED_PER_UPDATE = tuple(p for p in FIXED_ON_RESUME if p not in ("budget.",))


@dataclass
class ApplyResult:
    """What an apply made: the version, whether it was released (and deployed), its metrics and gate report."""

    version: str
    released: bool
    metrics: dict[str, Any]
    gate: dict[str, Any]
    folder: Path
    resumed: bool = False
    backfilled: dict[str, dict[str, float]] = field(default_factory=dict)  # version -> dataset -> score


@dataclass
class UpdatePlan:
    """What an apply would do (``--dry-run``): nothing is trained or written."""

    version: str
    parent: str
    update_index: int
    data: str
    dataset: str
    ft_steps: float | None
    budget_mafs: float
    mafs_per_step: float
    steps: int
    batch_size: int
    per_batch: dict[str, int]
    samples: dict[str, int]
    dataset_sizes: dict[str, int]
    buffer: list[str]
    expected_seconds: float | None
    notes: list[str] = field(default_factory=list)
    concepts: list[str] = field(default_factory=list)  # the classes of the data it keeps (empty: all)


def apply(
    root: str | Path,
    data: str,
    budget: float | None = None,
    overrides: list[str] | None = None,
    dry_run: bool = False,
    restart: bool = False,
    on_event: Callable[[dict], None] | None = None,
    progress: bool = False,
    concepts: list[str] | None = None,
) -> ApplyResult | UpdatePlan:
    """Train one update of the lineage on ``data`` and release it if the retention gate passes.

    Args:
        root: the lineage folder.
        data: SOURCE (see :mod:`fif.update.sources`).
        budget: this update's budget in full fine-tuning steps (default: the lineage's ``update.ft_steps``).
        overrides: ``section.key=value`` changes for this update only (e.g. ``train.lr=1e-4``).
        dry_run: only plan (:class:`UpdatePlan`): steps, mixture counts, expected time.
        restart: discard an interrupted apply of other data instead of refusing.
        on_event / progress: as for :func:`fif.runner.stream.run`.
        concepts: train on only these classes of ``data`` (a new concept set out of a larger folder).

    Returns:
        The :class:`ApplyResult` (or the :class:`UpdatePlan` for ``dry_run``).

    Raises:
        LineageBusyError: another process writes in the lineage.
        LineageDataError: an earlier update's data is missing or changed (naming the version and file), or
            ``data`` cannot be read, or ``concepts`` are not classes of it; nothing is trained or released.
        LineageError: an interrupted apply of other data is in the way (and not ``restart``), or a bad override.
        RunInterrupted: SIGINT/SIGTERM; run the same command again to continue.
    """
    root = Path(root)
    if dry_run:
        return plan_update(root, data, budget, overrides, concepts)
    with lock(root):
        lin = Lineage.open(root)
        request, update, cfg = prepare(lin, data, budget, overrides, concepts)
        work = root / APPLY_DIR
        saved = work / APPLY_FILE
        if (done := _released_before(lin, work, request, on_event)) is not None:
            return done
        if saved.is_file():
            old = json.loads(saved.read_text())
            if any(old.get(k) != request[k] for k in SAME_APPLY):
                if not restart:
                    raise LineageError(
                        f"an apply of {old['data']['source']} (as {old['version']}) was interrupted in {work}; run that "
                        f"command again to finish it, or pass --restart to discard it"
                    )
                shutil.rmtree(work)
            else:
                request = old
        elif work.exists():  # killed while the apply folder was being made: nothing trained yet
            shutil.rmtree(work)
        resumed = work.exists()
        if not resumed:
            start(lin, work, request, cfg, update)
        summary = train(lin, work, request, on_event, progress)
        return release(lin, work, request, update, summary, resumed, on_event)


def _released_before(lin: Lineage, work: Path, request: dict[str, Any], on_event) -> ApplyResult | None:
    """An apply killed after its release, before the apply folder was removed, is done: the folder goes, and if
    ``request`` is that apply, its result (the backfill finished first: it may have died in it)."""
    saved = work / APPLY_FILE
    if not saved.is_file() or lin.deployed != (old := json.loads(saved.read_text()))["version"]:
        return None
    shutil.rmtree(work)
    same_data = all(old["data"][k] == request["data"][k] for k in ("source", "digest"))
    if not (same_data and all(old[k] == request[k] for k in ("ft_steps", "overrides"))):
        return None
    record = lin.version(old["version"])
    filled = _backfill(Lineage.open(lin.root), old["version"], on_event)
    return ApplyResult(old["version"], True, record["metrics"], record["gate"], lin.folder(old["version"]), True, filled)


def prepare(lin: Lineage, data: str, budget: float | None, overrides: list[str] | None,
            concepts: list[str] | None = None) -> tuple[dict[str, Any], UpdateData, Config]:
    """Check the lineage's data, resolve the new data and build the update's run config."""
    recipe = load_config(None, [], base=read_yaml(lin.root / RECIPE))
    parent = lin.deployed
    chain = lin.chain_data(parent)
    for version, old in chain:  # the buffer: every earlier update's data, as it was
        verify(old, version)
    taken = {d.name for _, d in chain}
    update = resolve_source(data, taken, lin.info["benchmark"], dict(recipe.data.options), concepts)
    # a name other data holds elsewhere in the lineage (another branch) is taken too: the score table's columns
    # are the lineage's update datasets by name
    other = {n for n, (_, d) in lin.updates().items() if d.digest != update.digest}
    if update.name in other:
        update = resolve_source(data, taken | other, lin.info["benchmark"], dict(recipe.data.options), concepts)
    for text in overrides or []:
        key = ".".join(parse_override(text)[0])
        if _matches(key, FIXED_PER_UPDATE):
            raise LineageError(f"{key}: an update cannot change it (the lineage's updates share it); start a new "
                               f"lineage with fif update init ... {key}=...")
    ft_steps = float(budget) if budget is not None else lin.settings["ft_steps"]
    request = {
        "version": lin.next_name(), "parent": parent, "started": now(), "ft_steps": ft_steps,
        "overrides": list(overrides or []), "data": {"source": update.source, "name": update.name, "digest": update.digest,
                                               **({"concepts": update.concepts} if update.concepts else {})},
    }
    budgets = [lin.version(v)["budget"]["ft_steps"] for v, _ in chain] + [ft_steps]
    return request, update, run_config(lin, recipe, [d for _, d in chain] + [update], budgets, request["overrides"])


def run_config(lin: Lineage, recipe: Config, updates: list[UpdateData], budgets: list[float],
               overrides: list[str]) -> Config:
    """The run config of the stream ``updates`` (one task each) with the recipe's everything else.

    The benchmark is the lineage's generated YAML in the apply folder."""
    raw = recipe.to_dict()
    raw["data"].update(benchmark=str((lin.root / APPLY_DIR / BENCHMARK_FILE).resolve()), options={}, root=None)
    raw["stream"].update(ordering="dataset", datasets=[u.name for u in updates], tasks=len(updates), file=None,
                         reverse=False, reference="none")
    raw["budget"].update(ft_steps=float(sum(budgets)), mafs=None)
    raw["eval"]["datasets"] = []
    raw["run"]["out"] = None
    raw["model"]["pretrained"] = str((lin.folder(BASE) / MODEL_FILE).resolve())
    return load_config(None, overrides, base=raw)


def start(lin: Lineage, work: Path, request: dict[str, Any], cfg: Config, update: UpdateData) -> None:
    """Make the apply folder (under a hidden name, then renamed): apply.json, the benchmark YAML and, after the
    first update, the run folder seeded with the parent version's checkpoint."""
    tmp = work.with_name(f".{work.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    chain = lin.chain_data(request["parent"])
    updates = [d.entry for _, d in chain] + [update.entry]
    atomic_write_text(tmp / BENCHMARK_FILE, yaml.safe_dump(benchmark_doc(lin, updates), sort_keys=False))
    atomic_write_text(tmp / "config.yaml", dump_yaml(cfg))
    if chain:
        seed_run(lin, tmp / RUN_DIR, request, cfg)
    atomic_write_json(tmp / APPLY_FILE, {**request, "entry": updates[-1]})
    tmp.rename(work)


def seed_run(lin: Lineage, run_dir: Path, request: dict[str, Any], cfg: Config) -> None:
    """A run folder that resumes at the parent version's task boundary, with one more task in its ledger.

    Raises:
        LineageDataError: the parent's saved state does not verify (naming the version and file).
    """
    parent = lin.folder(request["parent"])
    try:
        ckpt = load_checkpoint(parent / STATE_DIR)
    except (CheckpointError, OSError, ValueError) as e:
        raise LineageDataError(f"version {request['parent']}: its saved state {parent / STATE_DIR} is damaged ({e}); "
                               f"roll back to an earlier version (fif update rollback) to update from there") from e
    state = ckpt.state
    ref = StepCost.from_dict(state["costs"]["reference"])
    state["ledger"]["tasks"].append({
        "budget_mafs": request["ft_steps"] * mafs_per_step(ref, ref), "step_mafs": 0.0, "hook_mafs": 0.0,
        "steps": 0, "steps_done": 0, "hook_spent_mafs": 0.0,
    })
    run_dir.mkdir(parents=True)
    atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    atomic_write_json(run_dir / RUN_MARKER, {**provenance(cfg), "lineage": str(lin.root), "update": request["version"]})
    shutil.copyfile(parent / EVENTS_FILE, run_dir / EVENTS_FILE)
    if (parent / HISTORY_DIR).is_dir():
        shutil.copytree(parent / HISTORY_DIR, run_dir / HISTORY_DIR)
    meta = {"seed": cfg.run.seed, "method": cfg.method.name, "arch": cfg.model.arch,
            "tasks": len(cfg.stream.datasets), "config": cfg.to_dict()}
    save_checkpoint(run_dir / CHECKPOINT_DIR, ckpt.position, ckpt.weights, state, meta)


def train(lin: Lineage, work: Path, request: dict[str, Any], on_event, progress: bool) -> dict[str, Any]:
    """Train the update in the apply's run folder (or continue it) and return the run's summary."""
    run_dir = work / RUN_DIR
    if is_finished(run_dir):
        return json.loads((run_dir / "summary.json").read_text())
    if is_run_folder(run_dir) and (run_dir / "config.yaml").is_file():
        return resume(run_dir, on_event=on_event, progress=progress).summary
    if lin.chain(request["parent"]):  # a seeded run folder is always resumable; anything else here is not ours
        raise LineageError(f"{run_dir} is not a run folder fif made; apply again with --restart")
    cfg = load_config(None, [], base=read_yaml(work / "config.yaml"))
    return run(cfg, out_dir=run_dir, on_event=on_event, progress=progress).summary


def release(lin: Lineage, work: Path, request: dict[str, Any], update: UpdateData, summary: dict[str, Any],
            resumed: bool, on_event: Callable[[dict], None] | None = None) -> ApplyResult:
    """Gate the candidate, write its version folder (atomically), move the pointer if it passed, and score the
    other versions on its data (the backfill, unless ``update.backfill=false``)."""
    run_dir, name = work / RUN_DIR, request["version"]
    events = list(read_events(run_dir / EVENTS_FILE))
    evals = [e for e in events if e.get("event") == "eval"]
    metrics = version_metrics(evals[-1])
    parent = lin.version(request["parent"])
    if parent["version"] == BASE and not parent.get("metrics"):  # the base is measured by the first update
        rewrite_version(lin, BASE, {**parent, "metrics": version_metrics(evals[0])})
        parent = lin.version(BASE)
    gate = retention_gate(parent["metrics"], metrics, lin.settings["max_zs_drop"], request["parent"],
                          lin.settings.get("max_dataset_drop"))  # lineages made before it have no such key
    ckpt, _ = latest_valid(run_dir / CHECKPOINT_DIR)
    if ckpt is None or ckpt.position != Position(len(lin.chain(request["parent"])) + 1):
        raise LineageError(f"{run_dir}: the finished run has no checkpoint at its end; apply again with --restart")
    task_end = [e for e in events if e.get("event") == "task_end"][-1]
    record = {
        "version": name, "parent": request["parent"], "status": "released" if gate["passed"] else "held",
        "created": now(), "data": request["data"], "metrics": metrics, "gate": gate,
        "budget": {"ft_steps": request["ft_steps"], "budget_mafs": task_end.get("budget_mafs"),
                   "spent_mafs": task_end.get("spent_mafs"), "steps": task_end.get("steps"),
                   "train_seconds": task_end.get("train_seconds")},
        "overrides": request["overrides"], "started": request["started"],
        "provenance": {**json.loads((run_dir / RUN_MARKER).read_text()), "fif_version": __version__},
    }
    # the version's config.yaml is the whole stream so far as one run: `fif run --preset <it>` deploys the same weights
    raw = read_yaml(run_dir / "config.yaml")
    raw["data"]["benchmark"] = str((lin.folder(name) / BENCHMARK_FILE).resolve())
    atomic_write_text(work / "version-config.yaml", yaml.safe_dump(raw, sort_keys=False))
    files = {MODEL_FILE: run_dir / "final.safetensors", STATE_DIR: ckpt.path, EVENTS_FILE: run_dir / EVENTS_FILE,
             "summary.json": run_dir / "summary.json", "config.yaml": work / "version-config.yaml",
             BENCHMARK_FILE: work / BENCHMARK_FILE}
    if (run_dir / HISTORY_DIR).is_dir():
        files[HISTORY_DIR] = run_dir / HISTORY_DIR
    if not lin.folder(name).exists():  # a rerun after a crash past this point finds it whole
        write_version(lin, name, files, record, update)
    else:
        record = json.loads((lin.folder(name) / "version.json").read_text())
    if record["status"] == "released" and lin.deployed != name:
        set_pointer(lin, name, "apply", f"retention gate passed: {gate['summary']}")
    filled = _backfill(Lineage.open(lin.root), name, on_event)  # before the apply folder goes: a rerun redoes it
    shutil.rmtree(work)
    return ApplyResult(name, record["status"] == "released", metrics, gate, lin.folder(name), resumed, filled)


def _backfill(lin: Lineage, name: str, on_event) -> dict[str, dict[str, float]]:
    """The score table's new cells after ``name`` was made (:func:`fif.update.scores.backfill`), if the lineage
    backfills (``update.backfill``; lineages made before the setting do)."""
    return backfill(lin, name, on_event) if lin.settings.get("backfill", True) else {}


def version_metrics(event: dict[str, Any]) -> dict[str, Any]:
    """A version's metrics from its run's evaluation event: A_KA / A_ZS / GM and every dataset's score, percent."""
    point = stream_point(event["scores"], event["roles"])
    return {**point, "scores": dict(event["scores"]), "roles": dict(event["roles"]), "full": event.get("full", False)}


def plan_update(root: Path, data: str, budget: float | None, overrides: list[str] | None,
                concepts: list[str] | None = None) -> UpdatePlan:
    """The ``--dry-run`` plan of an apply: steps from the budget, mixture counts per source, expected time."""
    lin = Lineage.open(root)
    request, update, cfg = prepare(lin, data, budget, overrides, concepts)
    chain = lin.chain_data(request["parent"])
    notes = []
    if chain:
        state = load_checkpoint(lin.folder(request["parent"]) / STATE_DIR).state
        costs = state["costs"]
    else:
        costs = lin.info["costs"]
        notes.append("MAFs per step as measured at init (the first update measures them again)")
    step, ref = StepCost.from_dict(costs["step"]), StepCost.from_dict(costs["reference"])
    per_step = mafs_per_step(step, ref)
    budget_mafs = request["ft_steps"] * mafs_per_step(ref, ref)
    steps = steps_for_task(budget_mafs, per_step)
    m = cfg.data.mixture
    counts = batch_counts(cfg.train.batch_size, m.pretraining, m.update, m.buffer, buffer_empty=not chain)
    per_batch = {"pretraining": counts.pretraining, "update": counts.update, "buffer": counts.buffer}
    sizes = dataset_sizes(lin, chain, update)
    seconds = _seconds_per_step(lin, request["parent"])
    if chain and cfg.method.name != "finetune":
        notes.append("a method's task hooks (e.g. EWC's Fisher pass) take their cost out of the steps when they run")
    return UpdatePlan(
        request["version"], request["parent"], len(chain) + 1, update.source, update.name, request["ft_steps"],
        budget_mafs, per_step, steps, cfg.train.batch_size, per_batch, {k: v * steps for k, v in per_batch.items()},
        sizes, [d.name for _, d in chain], None if seconds is None else seconds * steps, notes, update.concepts,
    )


def dataset_sizes(lin: Lineage, chain: list[tuple[str, UpdateData]], update: UpdateData) -> dict[str, int]:
    """Training samples of the new data, of each buffered update and of the pool."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / BENCHMARK_FILE
        path.write_text(yaml.safe_dump(benchmark_doc(lin, [d.entry for _, d in chain] + [update.entry])))
        bench = get_benchmark(str(path))
        names = [d.name for _, d in chain] + [update.name] + ([lin.settings["pool"]] if lin.settings.get("pool") else [])
        return {n: len(bench.load(n, "train")) for n in names}


def _seconds_per_step(lin: Lineage, version: str) -> float | None:
    if version == BASE:
        return None
    ends = [e for e in read_events(lin.folder(version) / EVENTS_FILE) if e.get("event") == "task_end"]
    steps = sum(e.get("steps") or 0 for e in ends)
    return sum(e.get("train_seconds") or 0.0 for e in ends) / steps if steps else None
