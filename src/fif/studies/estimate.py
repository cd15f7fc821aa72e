"""How long a study's unfinished runs will take: runs × full fine-tuning steps × seconds per step, the
seconds measured on the study's own finished runs (setup, evaluation and validation included), else a
guess for the mini model on a CPU, else unknown."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from fif.config import load_config, read_yaml
from fif.runner.state import is_finished
from fif.runner.sweep import run_state
from fif.studies.plan import VALIDATION_DIR, StudyPlan

# Wall seconds per full fine-tuning step (training + its share of the evaluations) and per run (setup), used
# for the estimate until a run of the study has finished: on mini v3 the 12 runs of `fif study mixtures`
# (240 steps of batch 128, 7 evaluations each) took 23-29 s each on the project's 2-core CPU under a light
# load. None for other models and devices.
GUESS_SECONDS = {("fif-mini-rn32", "cpu"): (0.055, 12.0)}
GUESS_BATCH = 128


@dataclass
class Estimate:
    """Runs × steps × seconds per step: ``steps`` are full fine-tuning steps of the budget (a cheaper method
    takes more, cheaper steps: the same MAFs); ``seconds_per_step`` includes evaluation and setup."""

    runs: int
    runs_left: int
    steps_left: float
    steps_per_run: list[float] = field(default_factory=list)
    seconds_per_step: float | None = None
    seconds_per_run: float = 0.0
    source: str = "unknown"

    @property
    def seconds_left(self) -> float | None:
        if self.seconds_per_step is None:
            return None
        return self.steps_left * self.seconds_per_step + self.runs_left * self.seconds_per_run


def _run_steps(cfg: dict[str, Any]) -> float:
    """Full fine-tuning steps of a run's budget (``budget.ft_steps``; under ``budget.mafs`` it is the basis
    the study's equal-compute budget was derived from)."""
    return float((cfg.get("budget") or {}).get("ft_steps") or 0.0)


def _measured_seconds(run_dir: Path) -> float | None:
    """Wall seconds of a finished, never-resumed run, setup included (from its config.yaml to run_end), plus
    the seconds its validation score took."""
    info_path, events_path = run_dir / "run.json", run_dir / "events.jsonl"
    if not is_finished(run_dir):
        return None
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if info.get("resumes"):
        return None  # its wall time spans an interruption
    end = json.loads(events_path.read_text().splitlines()[-1])
    began = (run_dir / "config.yaml").stat().st_mtime  # written before setup, so setup time counts too
    validation = run_dir.parent / VALIDATION_DIR / f"{run_dir.name}.json"
    scored = json.loads(validation.read_text()).get("seconds", 0.0) if validation.is_file() else 0.0
    return max(float(end["time"]) - began, 0.0) + float(scored or 0.0)


def estimate(plan: StudyPlan, out: str | Path, device_type: str = "cpu", only: Sequence[str] | None = None) -> Estimate:
    """How long the unfinished runs (of ``only``, default all) will take: seconds per step measured on this
    study's finished runs, else a guess for the mini model on a 2-core CPU (``GUESS_SECONDS``), else unknown."""
    out = Path(out)
    left, steps_left, per_run, wall, done_steps = 0, 0.0, [], 0.0, 0.0
    for r in plan.runs:
        path = out / "configs" / f"{r.name}.yaml"
        steps = _run_steps(read_yaml(path) if path.is_file() else {})
        per_run.append(steps)
        state = run_state(out / r.name)
        if state != "finished" and (only is None or r.name in only):
            left += 1
            steps_left += steps
        elif state == "finished" and (seconds := _measured_seconds(out / r.name)) is not None:
            wall += seconds
            done_steps += steps
    if done_steps > 0:
        return Estimate(len(plan.runs), left, steps_left, per_run, wall / done_steps, 0.0,
                        "measured on this study's finished runs")
    cfg = load_config(plan.preset, plan.overrides)
    guess = GUESS_SECONDS.get((cfg.model.arch, device_type))
    if guess is None:
        return Estimate(len(plan.runs), left, steps_left, per_run)
    per_step = guess[0] * cfg.train.batch_size / GUESS_BATCH
    return Estimate(len(plan.runs), left, steps_left, per_run, per_step, guess[1],
                    "a guess from mini runs on a 2-core CPU; measured once a run of this study has finished")


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    minutes = seconds / 60
    return f"{seconds:.0f} s" if seconds < 90 else f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"
