"""Running a written study here (one run after another, each resumed or skipped as its folder says, each
finished run scored on the validation signal), and writing its report.

Under torchrun every rank runs :func:`run_study`; each run is then data-parallel and rank 0 alone scores
the validation signal and writes the report.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from fif.core.io import atomic_write_json
from fif.runner.folder import TrainingDivergedError
from fif.runner.state import is_finished
from fif.runner.sweep import RunOutcome, run_sweep
from fif.studies.analysis import StudyAnalysis, analyze, load_records
from fif.studies.estimate import estimate
from fif.studies.plan import StudyPlan, read_plan
from fif.studies.report import StudyReport, write_study_report
from fif.studies.tuning import score_validation
from fif.train.distributed import is_main


FAILED_DIR = "failed"


def failed_runs(out: str | Path) -> dict[str, str]:
    """Runs of study folder ``out`` that diverged and have not finished since: name → the error message."""
    failed = {}
    for path in sorted((Path(out) / FAILED_DIR).glob("*.json")):
        if not is_finished(Path(out) / path.stem):
            failed[path.stem] = json.loads(path.read_text()).get("error", "diverged")
    return failed


@dataclass
class Progress:
    """After each run: its position, what was done, how long it took, and the time left (None: unknown)."""

    done: int
    total: int
    name: str
    action: str
    seconds: float
    seconds_left: float | None


def _select(plan: StudyPlan, only: Sequence[str]) -> list[str]:
    names = [r.name for r in plan.runs]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise KeyError(f"study {plan.study.name!r} has no run {unknown[0]!r}; list its runs with: fif study --out DIR --list")
    return [n for n in names if not only or n in only]


def run_study(
    out: str | Path,
    only: Sequence[str] = (),
    progress: bool = False,
    on_start: Callable[[str, str], None] | None = None,
    on_done: Callable[[Progress], None] | None = None,
    events_for: Callable[[str], Callable[[dict], None] | None] | None = None,
    device_type: str = "cpu",
    retry_failed: bool = False,
) -> list[RunOutcome]:
    """Run (or resume, or skip when finished) the study's runs here and score each on the validation signal.

    A run that diverges (e.g. a grid's largest learning rate) is recorded in ``failed/<run>.json`` and the
    study goes on; later calls skip it (action ``failed``) unless ``retry_failed``. The report lists it,
    and its grid point is compared on the seeds that finished.

    Args:
        out: the study folder (:func:`fif.studies.plan.write_study`).
        only: just these runs (default all, in the plan's order: seed by seed).
        progress: tqdm bars inside each run.
        on_start: called with (run name, ``ran``/``resumed``/``skipped``) before each run.
        on_done: called with a :class:`Progress` after each run.
        events_for: each run's ``on_event`` from its name.
        device_type: ``cpu`` or ``cuda``, for the time estimate's guess before a run has finished.
        retry_failed: run again the runs that diverged before.

    Raises:
        KeyError: a name in ``only`` is not a run of the study.
        RunInterrupted: SIGINT/SIGTERM (the run checkpointed; running the study again continues it).
    """
    plan = read_plan(out)
    names = _select(plan, only)
    outcomes = []
    failed = {} if retry_failed else failed_runs(out)
    for i, name in enumerate(names):
        t0 = time.perf_counter()
        if name in failed:
            if on_start is not None:
                on_start(name, "failed")
            outcome = RunOutcome(name, "failed", Path(out) / name)
        else:
            try:
                outcome = run_sweep(out, [name], resume=True, on_start=on_start, events_for=events_for,
                                    progress=progress)[0]
            except TrainingDivergedError as e:  # a point of the grid, not the study, failed: record it, go on
                if is_main():
                    atomic_write_json(Path(out) / FAILED_DIR / f"{name}.json", {"error": str(e), "time": time.time()})
                outcome = RunOutcome(name, "diverged", Path(out) / name)
            if outcome.action != "diverged" and plan.validation is not None and is_main():
                score_validation(out, name, plan.validation)
        outcomes.append(outcome)
        if on_done is not None:
            left = estimate(plan, out, device_type, only=names[i + 1:])
            on_done(Progress(i + 1, len(names), name, outcome.action, time.perf_counter() - t0, left.seconds_left))
    return outcomes


def report_study(out: str | Path, report_dir: str | Path | None = None) -> tuple[StudyAnalysis, StudyReport]:
    """Score any finished run that has no validation score yet (runs made by ``fif sweep`` or a SLURM array),
    analyse the finished runs and write the report (partial if runs are missing).

    Returns:
        The analysis and what was written.
    """
    plan = read_plan(out)
    if plan.validation is not None:
        for r in plan.runs:
            score_validation(out, r.name, plan.validation)
    records, missing = load_records(out, plan)
    analysis = analyze(plan, records, missing, failed_runs(out))
    return analysis, write_study_report(out, analysis, records, report_dir)
