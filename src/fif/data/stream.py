"""Streams: an ordered list of concepts ``DATASET+++classname`` chunked into T update tasks.

A stream is FiF's JSON format: a list of unique concept strings. A retrieval dataset (no classes)
enters a stream as the single concept ``DATASET+++*`` (all of its training pairs). Orderings that need
only metadata live here; those that need a model (similarity, easy-to-hard) and corpus statistics
(frequency) live in ``fif.data.orderings``.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from fif.data.registry import Benchmark, unknown_name_message
from fif.data.specs import concept_id, split_concept

ALL_PAIRS = "*"  # classname of a retrieval dataset's single concept


@dataclass(frozen=True)
class Task:
    """One update task: its index and the concepts whose training data it holds."""

    index: int
    concepts: tuple[str, ...]


def rng_for(seed: int, *purpose: int | str) -> np.random.Generator:
    """A generator seeded from (run seed, purpose...): strings are hashed stably (crc32), so the same
    seed and purpose give the same stream in every process and on every machine."""
    words = [int(seed) & 0xFFFFFFFF]
    for p in purpose:
        words.append(zlib.crc32(p.encode()) if isinstance(p, str) else int(p) & 0xFFFFFFFF)
    return np.random.default_rng(np.random.SeedSequence(words))


def benchmark_concepts(benchmark: Benchmark, datasets: Sequence[str] = ()) -> list[str]:
    """Every concept of the benchmark's adaptation datasets, dataset by dataset in registry order.

    Args:
        datasets: restrict to these adaptation datasets (empty = all).

    Raises:
        KeyError: a named dataset is unknown or not an adaptation dataset.
    """
    adaptation = {s.name: s for s in benchmark.adaptation}
    for name in datasets:
        if name not in adaptation:
            raise KeyError(unknown_name_message("adaptation dataset (stream.datasets)", name, adaptation))
    chosen = [adaptation[n] for n in datasets] if datasets else list(adaptation.values())
    out = []
    for spec in chosen:
        if spec.kind == "retrieval":
            out.append(concept_id(spec.name, ALL_PAIRS))
        else:
            out.extend(concept_id(spec.name, c) for c in spec.classnames)
    return out


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
        valid_classes = [ALL_PAIRS] if spec.kind == "retrieval" else list(spec.classnames)
        if classname not in valid_classes:
            raise ValueError(
                f"{source}: {unknown_name_message('class', classname, valid_classes, where=f'dataset {dataset!r}')}"
            )


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
    from fif.results import atomic_write_text

    return atomic_write_text(Path(path), json.dumps(list(concepts), indent=1))


def chunk(concepts: Sequence[str], num_tasks: int) -> list[Task]:
    """FiF's chunking: contiguous tasks, the first ``len % T`` tasks one concept larger.

    Raises:
        ValueError: fewer concepts than tasks.
    """
    n = len(concepts)
    if num_tasks < 1:
        raise ValueError(f"stream.tasks must be >= 1, got {num_tasks}")
    if n < num_tasks:
        raise ValueError(f"stream.tasks={num_tasks} but the stream has only {n} concepts; use stream.tasks<={n}")
    base, extra = divmod(n, num_tasks)
    tasks, start = [], 0
    for t in range(num_tasks):
        size = base + (1 if t < extra else 0)
        tasks.append(Task(t, tuple(concepts[start : start + size])))
        start += size
    return tasks


def chunk_by_dataset(concepts: Sequence[str]) -> list[Task]:
    """One task per dataset, in order of first appearance (dataset-incremental)."""
    groups: dict[str, list[str]] = {}
    for c in concepts:
        groups.setdefault(split_concept(c)[0], []).append(c)
    return [Task(i, tuple(cs)) for i, cs in enumerate(groups.values())]


def order_random(concepts: Sequence[str], seed: int) -> list[str]:
    """A seeded shuffle."""
    perm = rng_for(seed, "stream-order").permutation(len(concepts))
    return [concepts[i] for i in perm]


def order_by_release(concepts: Sequence[str], benchmark: Benchmark) -> list[str]:
    """Whole datasets in order of release year (stable within a year)."""
    year = {s.name: (s.release_year or 0) for s in benchmark.datasets.values()}
    return sorted(concepts, key=lambda c: year[split_concept(c)[0]])


def build_tasks(
    benchmark: Benchmark,
    ordering: str,
    num_tasks: int,
    seed: int = 0,
    reverse: bool = False,
    file: str | None = None,
    datasets: Sequence[str] = (),
) -> list[Task]:
    """The tasks of a run: order the benchmark's concepts, then chunk them.

    ``dataset`` ordering gives one task per dataset (T = number of datasets). Orderings that need the
    base model or a corpus come from ``fif.data.orderings`` when registered there.

    Raises:
        ValueError / KeyError: unknown ordering, bad stream file, too few concepts.
    """
    if ordering == "file":
        if not file:
            raise ValueError("stream.ordering=file needs stream.file=/path/to/stream.json")
        concepts = read_stream(file)
        validate_stream(concepts, benchmark, source=f"stream file {file}")
    else:
        concepts = benchmark_concepts(benchmark, datasets)
        if ordering == "random":
            concepts = order_random(concepts, seed)
        elif ordering == "time":
            concepts = order_by_release(concepts, benchmark)
        elif ordering != "dataset":
            raise ValueError(
                f"stream.ordering={ordering!r} is not available here; valid: {', '.join(ORDERINGS)}"
            )
    if reverse:
        concepts = concepts[::-1]
    if ordering == "dataset":
        return chunk_by_dataset(concepts)
    return chunk(concepts, num_tasks)


ORDERINGS = ("dataset", "random", "time", "file")


def task_indices(task: Task, benchmark: Benchmark, split: str = "train") -> dict[str, np.ndarray]:
    """Training-sample indices of each dataset in ``task`` (sorted), e.g. ``{'mini_digits': array([...])}``.

    Raises:
        ValueError: a concept has no samples in the split.
    """
    wanted: dict[str, list[str]] = {}
    for concept in task.concepts:
        dataset, classname = split_concept(concept)
        wanted.setdefault(dataset, []).append(classname)
    out: dict[str, np.ndarray] = {}
    for dataset, classnames in wanted.items():
        spec = benchmark.spec(dataset)
        data = benchmark.load(dataset, split)
        if ALL_PAIRS in classnames:
            out[dataset] = np.arange(len(data), dtype=np.int64)
            continue
        class_ids = np.array([spec.classnames.index(c) for c in classnames], dtype=np.int64)
        idx = np.flatnonzero(np.isin(data.targets, class_ids)).astype(np.int64)
        present = set(np.unique(data.targets[idx]).tolist())
        missing = [spec.classnames[c] for c in class_ids.tolist() if c not in present]
        if missing:
            raise ValueError(
                f"task {task.index}: class(es) {missing[:5]} of dataset {dataset!r} have no {split!r} samples"
            )
        out[dataset] = idx
    return out
