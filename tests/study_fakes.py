"""Hand-made study folders for the study tests (on the test path: ``pythonpath`` in pyproject.toml).

:func:`fake_study` expands a small two-variant study on mini and writes, for each run, a finished run folder
whose event log holds the scores given (dataset ``A`` = adaptation, ``E`` = eval-only, so A_KA = A and A_ZS
= E), plus a validation score, so the statistics can be checked against numbers worked out by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

from fif.core.io import atomic_write_json
from fif.studies.plan import expand_study, write_study
from fif.studies.spec import parse_study
from fif.studies.tuning import _weights_stamp, validation_path

# A study of two variants with their own grids and a multiple in a variant's overrides (tests/studies/test_plan.py).
SMALL = {
    "name": "small", "overrides": ["merge.preset=none"], "seeds": [0, 1], "tune": {"train.lr": ["x0.5", "x2"]},
    "variants": [{"name": "ft", "overrides": ["method.name=finetune"]},
                 {"name": "ewc", "overrides": ["method.name=ewc", "budget.ft_steps=x0.5"],
                  "tune": {"train.lr": ["x1"], "method.strength": ["1e4", "1e5"]}}],
    "compare": [{"claim": "c", "a": "ft", "b": "ewc", "metric": "gm"}],
}

STUDY = {
    "name": "fake", "seeds": [0, 1, 2], "tune": {"train.lr": ["x1", "x2"]},
    "variants": [{"name": "base", "overrides": ["merge.preset=none"]},
                 {"name": "new", "overrides": ["merge.preset=ema_merge"]}],
    "compare": [
        {"claim": "new accumulates more than base", "a": "new", "b": "base", "metric": "a_ka", "expect": "higher"},
        {"claim": "new retains more than base", "a": "new", "b": "base", "metric": "a_zs", "expect": "higher"},
        {"claim": "new keeps more A_KA along the stream", "a": "new", "b": "base", "metric": "a_ka",
         "at": "trajectory_mean", "expect": "higher"},
        {"claim": "the variants differ more mid-stream than at the end", "spread": "a_ka", "expect": "higher"},
    ],
}

# (variant, lr) -> per seed: (A_KA path: zero-shot, after task 1, after task 2; A_ZS at the end; validation GM)
RESULTS = {
    ("base", "0.0002"): [((10, 20, 30), 80, 40.0), ((10, 22, 32), 80, 40.0), ((10, 24, 34), 80, 40.0)],
    ("base", "0.0004"): [((10, 30, 40), 70, 30.0), ((10, 31, 41), 70, 30.0), ((10, 32, 42), 70, 30.0)],
    ("new", "0.0002"): [((10, 25, 33), 81, 35.0), ((10, 27, 36), 79, 35.0), ((10, 26, 36), 83, 35.0)],
    ("new", "0.0004"): [((10, 15, 35), 60, 36.0), ((10, 17, 38), 60, 36.0), ((10, 19, 41), 60, 36.0)],
}
ZS_AT_START = 90.0


def write_run(folder: Path, ka: tuple[float, ...], zs_end: float, config_text: str) -> None:
    """A finished run folder with one evaluation per task (A_ZS falls linearly from 90 to ``zs_end``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(config_text)
    n = len(ka)
    events = [{"event": "run_start", "time": 1.0, "tasks": n - 1, "method": "finetune", "step_gflops": 1.0,
               "mafs_per_step": 1e9, "budget_total_mafs": 2e10, "device": "cpu", "precision": "fp32"}]
    for i, a in enumerate(ka):
        task = i - 1
        if task >= 0:
            events += [{"event": "task_start", "task": task, "steps": 10, "concepts": 2},
                       {"event": "task_end", "task": task, "steps": 10, "budget_mafs": 1e10, "spent_mafs": 1e10,
                        "train_seconds": 1.0}]
        e = ZS_AT_START + (zs_end - ZS_AT_START) * i / (n - 1)
        events.append({"event": "eval", "time": 2.0 + i, "task": task, "full": i in (0, n - 1), "seconds": 0.5,
                       "scores": {"A": float(a), "E": float(e)}, "roles": {"A": "adaptation", "E": "eval_only"}})
    events.append({"event": "run_end", "time": 10.0})
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (folder / "summary.json").write_text("{}")
    (folder / "final.safetensors").write_bytes(b"weights")


def fake_study(out: Path, validation: bool = True, skip: tuple[str, ...] = ()) -> Path:
    """Expand :data:`STUDY` on mini into ``out`` and write every run of :data:`RESULTS` (except ``skip``)."""
    study = dict(STUDY, validation="auto" if validation else None)
    plan, sweep = expand_study(parse_study(study), "mini")
    write_study(plan, sweep, out)
    for r in plan.runs:
        if r.name in skip:
            continue
        ka, zs_end, val = RESULTS[(r.variant, r.point["train.lr"])][r.seed]
        write_run(out / r.name, ka, zs_end, (out / "configs" / f"{r.name}.yaml").read_text())
        if validation:
            atomic_write_json(validation_path(out, r.name), {
                "gm": val, "a_ka": val, "a_zs": val, "weights": _weights_stamp(out / r.name / "final.safetensors")})
    return out
