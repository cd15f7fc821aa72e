"""Fair tuning: each finished run's deployed weights scored on a validation signal that is not the reported
test scores, and the grid point of each variant chosen on it.

The validation score of a run is written once to ``<study>/validation/<run>.json`` (atomic), with the size
and time of the weights it scored, so a run that is redone is scored again and nothing else is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from fif.config import load_config, read_yaml
from fif.core.io import atomic_write_json
from fif.core.version import __version__
from fif.runner.evaluate import evaluate_config
from fif.runner.state import is_finished
from fif.studies.plan import VALIDATION_DIR
from fif.studies.spec import Validation
from fif.studies.stats import best_point

WEIGHTS = "final.safetensors"


def validation_path(out: str | Path, name: str) -> Path:
    return Path(out) / VALIDATION_DIR / f"{name}.json"


def _weights_stamp(weights: Path) -> dict[str, int]:
    st = weights.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_validation(out: str | Path, name: str) -> dict[str, Any] | None:
    """The stored validation score of run ``name`` if it matches the run's current weights, else None."""
    path, weights = validation_path(out, name), Path(out) / name / WEIGHTS
    if not path.is_file() or not weights.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError:
        return None  # a torn file: score it again
    return record if record.get("weights") == _weights_stamp(weights) else None


def score_validation(out: str | Path, name: str, validation: Validation, on_event=None) -> dict[str, Any] | None:
    """Score run ``name``'s deployed weights on ``validation`` (once; later calls read the stored score).

    Args:
        out: the study folder.
        name: the run.
        validation: the overrides and split to score on.
        on_event: passed to the evaluation (base-model progress events).

    Returns:
        ``{a_ka, a_zs, gm, scores, split, subset, overrides, ...}``, or None when the run has not finished.

    Raises:
        ConfigError, ValueError, KeyError: the validation overrides or split do not fit the run's benchmark.
    """
    out = Path(out)
    run_dir, weights = out / name, out / name / WEIGHTS
    if not is_finished(run_dir) or not weights.is_file():
        return None
    stored = read_validation(out, name)
    if stored is not None:
        return stored
    cfg = load_config(None, [f"model.pretrained={weights.resolve()}", *validation.overrides],
                      base=read_yaml(run_dir / "config.yaml"))
    result = evaluate_config(cfg, subset=validation.subset, on_event=on_event, split=validation.split)
    record = {
        **result.point, "scores": {s.dataset: s.score for s in result.scores},
        "roles": {s.dataset: s.role for s in result.scores}, "split": validation.split, "subset": validation.subset,
        "overrides": list(validation.overrides), "seconds": round(result.seconds, 3),
        "weights": _weights_stamp(weights), "fif_version": __version__,
    }
    atomic_write_json(validation_path(out, name), record)
    return record


def choose_points(scores: Mapping[str, Sequence[float]], order: Sequence[str]) -> str | None:
    """The grid point (key) with the highest mean score over its seeds; the earlier one in ``order`` on ties.

    Args:
        scores: point → its seeds' scores (a point without scores cannot be chosen).
        order: the grid's order of the points.
    """
    return best_point({k: list(scores.get(k, [])) for k in order})
