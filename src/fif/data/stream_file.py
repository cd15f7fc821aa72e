"""Stream files: FiF's JSON list of ``"DATASET+++classname"``, read, checked and fitted to the data present.

The reference's 29 stream files load as they are: a retrieval set that carries classes (FSCOCO) is
listed by class (``FSCOCO+++cow``), and a stream file written for all 41 datasets is filtered to the
datasets a partial download holds (:func:`fit_stream`), with one line saying what was dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from fif.core.io import atomic_write_text
from fif.core.names import unknown_name_message
from fif.data.registry import Benchmark
from fif.data.specs import ALL_PAIRS, split_concept


def read_stream(path: str | Path) -> list[str]:
    """Read FiF's stream JSON (a list of 'DATASET+++classname').

    Raises:
        ValueError: the file is missing, not JSON, or not a list of strings.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"stream.file: {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"stream file {path}: not valid JSON ({e})") from e
    if not isinstance(data, list) or not all(isinstance(c, str) for c in data):
        raise ValueError(f"stream file {path}: expected a JSON list of 'DATASET+++classname' strings")
    return data


def write_stream(concepts: Sequence[str], path: str | Path) -> Path:
    """Write a stream as FiF's JSON list (atomically)."""

    return atomic_write_text(Path(path), json.dumps(list(concepts), indent=1))


def valid_classes(benchmark: Benchmark, dataset: str) -> list[str]:
    """The class names a stream may name for ``dataset``: its classes, and ``*`` (all pairs) for a
    retrieval set."""
    spec = benchmark.spec(dataset)
    return [*spec.classnames, ALL_PAIRS] if spec.kind == "retrieval" else list(spec.classnames)


def validate_stream(concepts: Sequence[str], benchmark: Benchmark, source: str = "stream") -> None:
    """Check every concept names an adaptation dataset and one of its classes, with no duplicates.

    Raises:
        ValueError: naming the first bad concept and the closest valid ones.
    """
    if not concepts:
        raise ValueError(f"{source}: the stream is empty")
    seen: set[str] = set()
    for concept in concepts:
        if not isinstance(concept, str):
            raise ValueError(f"{source}: concept {concept!r} is not a string 'DATASET+++classname'")
        dataset, classname = split_concept(concept)
        if concept in seen:
            raise ValueError(f"{source}: concept {concept!r} appears twice; streams list each concept once")
        seen.add(concept)
        spec = benchmark.datasets.get(dataset)
        if spec is None or spec.role != "adaptation":
            valid = [s.name for s in benchmark.adaptation]
            raise ValueError(f"{source}: {unknown_name_message('adaptation dataset', dataset, valid)}")
        classes = valid_classes(benchmark, dataset)
        if classname not in classes:
            raise ValueError(
                f"{source}: {unknown_name_message('class', classname, classes, where=f'dataset {dataset!r}')}"
            )


def fit_stream(concepts: Sequence[str], benchmark: Benchmark, datasets: Sequence[str] = (),
               source: str = "stream") -> tuple[list[str], str | None]:
    """A stream file fitted to the data present: concepts of datasets the benchmark left out (not
    downloaded, not chosen) or outside ``datasets`` are dropped, and so are classes without a training
    image (which no task could learn); the rest is validated.

    Args:
        concepts: the file's concepts, in order.
        benchmark: the run's benchmark (its ``left_out`` names the datasets it knows but did not load).
        datasets: keep only these adaptation datasets (``stream.datasets``; empty = every one present).
        source: what to name in messages (the file).

    Returns:
        (the concepts kept, in order; one line saying what was dropped, or None).

    Raises:
        ValueError: an unknown dataset or class, a duplicate, or nothing left.
        KeyError: ``datasets`` names something that is not an adaptation dataset of the benchmark.
    """
    adaptation = {s.name for s in benchmark.adaptation}
    for name in datasets:
        if name not in adaptation:
            raise KeyError(unknown_name_message("adaptation dataset (stream.datasets)", name, sorted(adaptation)))
    absent: dict[str, int] = {}
    unchosen: dict[str, int] = {}
    kept = []
    for concept in concepts:
        dataset = split_concept(concept)[0] if isinstance(concept, str) else ""
        if dataset in benchmark.left_out:
            absent[dataset] = absent.get(dataset, 0) + 1
        elif datasets and dataset in adaptation and dataset not in datasets:
            unchosen[dataset] = unchosen.get(dataset, 0) + 1
        else:
            kept.append(concept)
    if concepts and not kept:
        raise ValueError(f"{source}: none of its {len(concepts)} concepts is of a dataset present "
                         f"({', '.join(sorted(adaptation))}); left out: {_listed(absent or unchosen)}")
    validate_stream(kept, benchmark, source)
    unlearnable = _without_training_images(kept, benchmark)
    kept = [c for c in kept if c not in unlearnable]
    if not kept:
        raise ValueError(f"{source}: none of its concepts has a training image in the data present")
    parts = []
    if absent:
        parts.append(f"{sum(absent.values())} concept(s) of {len(absent)} dataset(s) not present ({_listed(absent)})")
    if unchosen:
        parts.append(f"{sum(unchosen.values())} concept(s) of {len(unchosen)} dataset(s) outside stream.datasets "
                     f"({_listed(unchosen)})")
    if unlearnable:
        parts.append(f"{len(unlearnable)} concept(s) without training images ({', '.join(sorted(unlearnable)[:3])}"
                     f"{', ...' if len(unlearnable) > 3 else ''})")
    note = f"{source}: kept {len(kept)} of {len(concepts)} concepts; dropped {'; '.join(parts)}" if parts else None
    return kept, note


def _listed(counts: dict[str, int], most: int = 8) -> str:
    shown = ", ".join(f"{name} {n}" for name, n in list(counts.items())[:most])
    return shown + (f", ... {len(counts) - most} more" if len(counts) > most else "")


def _without_training_images(concepts: Sequence[str], benchmark: Benchmark) -> set[str]:
    """Concepts whose class has no sample in its dataset's training split (loads those splits)."""
    wanted: dict[str, list[str]] = {}
    for c in concepts:
        wanted.setdefault(split_concept(c)[0], []).append(c)
    out: set[str] = set()
    for dataset, members in wanted.items():
        spec = benchmark.spec(dataset)
        present = set(np.unique(benchmark.load(dataset, "train").targets).tolist())
        for c in members:
            classname = split_concept(c)[1]
            if classname != ALL_PAIRS and spec.classnames.index(classname) not in present:
                out.add(c)
    return out
