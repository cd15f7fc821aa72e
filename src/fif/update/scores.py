"""The lineage's score table: every version scored on every update dataset the lineage knows and on the guard
sets (`fif update eval`, and the backfill after each apply).

The paper scores every checkpoint on all adaptation datasets, those not trained on yet included, so that A_KA
is a mean over one fixed set and versions compare. A version's own apply scores it on the guard sets and on its
chain's update datasets (``metrics.scores`` in version.json). The cells it lacks (update datasets added later,
or on another branch after a rollback) are scored here with fif's evaluator
(:func:`fif.runner.evaluate.evaluate_config`) on the version's weights, with the recipe's evaluation settings
and the same full-or-subset choice as its own evaluation, and kept in its folder's ``scores.json`` (written
atomically; the weights are never touched). Reads of the table: :meth:`fif.update.lineage.Lineage.row`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from fif.config import load_config, read_yaml
from fif.core.io import atomic_write_json
from fif.core.version import __version__
from fif.runner.evaluate import evaluate_config
from fif.update.lineage import MODEL_FILE, RECIPE, SCORES_FILE, Lineage, benchmark_doc, lock, now
from fif.update.sources import LineageDataError, verify


def missing_cells(lin: Lineage, versions: list[str] | None = None, datasets: list[str] | None = None
                  ) -> dict[str, list[str]]:
    """The empty cells of the score table: version -> the datasets it has no score on (only versions with some).

    Args:
        versions: the rows to look at (default: every version).
        datasets: the columns to look at (default: the guard sets and every update dataset of the lineage).

    Raises:
        LineageError: an unknown version.
    """
    columns = datasets if datasets is not None else list(lin.roles())
    out = {}
    for name in versions if versions is not None else [v["version"] for v in lin.versions]:
        row = lin.row(name)
        if empty := [d for d in columns if d not in row]:
            out[name] = empty
    return out


def score_version(lin: Lineage, version: str, datasets: list[str], on_event: Callable[[dict], None] | None = None
                  ) -> dict[str, dict[str, Any]]:
    """Score ``version``'s weights on ``datasets`` (guard sets or update datasets of the lineage) with fif's
    evaluator, as the lineage's runs score their versions: the recipe's eval settings and seed (so the same
    class-stratified subsets), full test sets if the version's own evaluation used them. Weights holding NaN/inf
    are scored as the run scored them (like chance), not refused. The caller checks the data (:func:`checked`).

    Returns:
        dataset -> the cell: ``{"score", "role", "full", "digest", "at", "fif_version"}``.
    """
    updates = lin.updates()
    recipe = read_yaml(lin.root / RECIPE)
    full = bool((lin.version(version).get("metrics") or {}).get("full", recipe["eval"].get("full_at_ends", True)))
    with tempfile.TemporaryDirectory() as tmp:
        bench = Path(tmp) / "benchmark.yaml"
        entries = [updates[n][1].entry for n in datasets if n in updates]
        bench.write_text(yaml.safe_dump(benchmark_doc(lin, entries), sort_keys=False))
        raw = {**recipe, "data": {**recipe["data"], "benchmark": str(bench), "options": {}, "root": None},
               "eval": {**recipe["eval"], "datasets": list(datasets)},
               "model": {**recipe["model"], "pretrained": str((lin.folder(version) / MODEL_FILE).resolve())}}
        result = evaluate_config(load_config(None, [], base=raw), subset=not full, on_event=on_event,
                                 allow_nonfinite=True)
    # rounded as the run's eval events round them, so a cell reads the same whichever path scored it
    return {s.dataset: {"score": round(s.score, 4), "role": s.role, "full": full, "at": now(), "fif_version": __version__,
                        "digest": updates[s.dataset][1].digest if s.dataset in updates else None}
            for s in result.scores}


def store_cells(lin: Lineage, version: str, cells: dict[str, dict[str, Any]]) -> None:
    """Add ``cells`` to ``version``'s scores.json (atomic: the file is whole, old or new)."""
    atomic_write_json(lin.folder(version) / SCORES_FILE,
                      {"version": version, "cells": {**lin.extra_cells(version), **cells}})


def checked(lin: Lineage, datasets: set[str], skip_bad: bool = False) -> set[str]:
    """The datasets of ``datasets`` whose data is as its version recorded it (guard sets always are), each
    checked once.

    Raises:
        LineageDataError: an update dataset's data changed or is missing (naming the version and file), unless
            ``skip_bad``: then it is left out.
    """
    updates, out = lin.updates(), set()
    for name in datasets:
        try:
            if name in updates:
                verify(updates[name][1], updates[name][0])
            out.add(name)
        except LineageDataError:
            if not skip_bad:
                raise
    return out


def fill(lin: Lineage, wanted: dict[str, list[str]], on_event: Callable[[dict], None] | None = None,
         skip_bad: bool = False) -> dict[str, dict[str, float]]:
    """Score and store the cells ``wanted`` (version -> datasets); the caller holds the lineage's lock.

    Args:
        skip_bad: leave the cells of data that no longer verifies empty, instead of raising.

    Returns:
        version -> dataset -> the score now stored.

    Raises:
        LineageDataError: without ``skip_bad``, the data of a wanted cell changed since its version was made.
    """
    good = checked(lin, {d for datasets in wanted.values() for d in datasets}, skip_bad)
    wanted = {v: [d for d in datasets if d in good] for v, datasets in wanted.items()}
    filled = {}
    for version, datasets in wanted.items():
        if datasets:
            cells = score_version(lin, version, datasets, on_event)
            store_cells(lin, version, cells)
            filled[version] = {d: c["score"] for d, c in cells.items()}
    return filled


def backfill(lin: Lineage, new: str, on_event: Callable[[dict], None] | None = None) -> dict[str, dict[str, float]]:
    """After ``new`` was made: score every other version on ``new``'s update dataset, and ``new`` on the update
    datasets its chain does not hold (another branch's); cells already there are kept. The caller holds the lock.
    It runs after the release, so data that no longer verifies leaves its cells empty rather than fail the
    apply (`fif update eval` then names the problem).

    Returns:
        version -> dataset -> the score now stored.
    """
    dataset = next((n for n, (v, _) in lin.updates().items() if v == new), None)
    wanted = missing_cells(lin, [v["version"] for v in lin.versions if v["version"] != new],
                           [dataset] if dataset else [])
    wanted.update(missing_cells(lin, [new]))
    return fill(lin, wanted, on_event, skip_bad=True)


def evaluate(root: str | Path, versions: list[str] | None = None, on_event: Callable[[dict], None] | None = None
             ) -> dict[str, dict[str, float]]:
    """`fif update eval`: fill the empty cells of the score table (after ``update.backfill=false``, or on a lineage
    made before the table); cells already there are skipped.

    Args:
        root: the lineage folder.
        versions: the rows to fill (default: every version).
        on_event: receives ``base_model`` progress events.

    Returns:
        version -> dataset -> the score now stored (empty: nothing was missing).

    Raises:
        LineageError: an unknown version.
        LineageBusyError: another process writes in the lineage.
        LineageDataError: an update dataset's data changed since its version was made.
    """
    root = Path(root)
    with lock(root):
        lin = Lineage.open(root)
        for name in versions or []:
            lin.version(name)
        return fill(lin, missing_cells(lin, versions), on_event)
