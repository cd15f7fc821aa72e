"""Streams: an ordered list of concepts ``DATASET+++classname`` chunked into T update tasks.

A stream is FiF's JSON format: a list of unique concept strings. A retrieval dataset without classes
enters a stream as the single concept ``DATASET+++*`` (all of its training pairs); one whose pairs carry
a class (FiF's FSCOCO) enters by class, as the reference's stream files list it. Orderings that need
only metadata (random, dataset, time, file) live here; those that need corpus statistics (frequency)
or the base model (similarity, easy-to-hard) live in :mod:`fif.data.orderings`.

Every ordering takes a seed and a reverse flag. The seed decides what the ordering itself leaves
tied (equal scores, same-year datasets, the random shuffle); ``reverse`` flips the finished order.
The two reference points every study needs are built here too: ``zeroshot`` (no task: the base
model is only evaluated) and ``oracle`` (the whole stream as one task with the whole budget).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from fif.core.names import unknown_name_message
from fif.core.seeding import rng_for
from fif.data import orderings
from fif.data.orderings import DIFFICULTY_SPLITS, ConceptScorer, OrderingOptions, seeded_sort  # noqa: F401 (re-exported)
from fif.data.registry import Benchmark
from fif.data.specs import ALL_PAIRS, concept_id, split_concept  # noqa: F401 (re-exported)
from fif.data.stream_file import fit_stream, read_stream, validate_stream, write_stream  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

ORDERINGS = ("dataset", "random", "time", "frequency", "similarity", "easy_to_hard", "file")
MODEL_ORDERINGS = ("similarity", "easy_to_hard")  # orderings that need the base model
REFERENCES = ("none", "zeroshot", "oracle")
COMMON_OPTIONS = ("run.seed", "stream.reverse", "stream.tasks", "stream.datasets", "stream.reference")
# ordering -> (its rule, the config keys it reads besides COMMON_OPTIONS): `fif stream build --help` lists them.
ORDERING_HELP: dict[str, tuple[str, tuple[str, ...]]] = {
    "dataset": ("one task per dataset, in registry order or that of stream.datasets (stream.tasks ignored)", ()),
    "random": ("a seeded shuffle of every concept", ()),
    "time": (("datasets by release year (FiF: the reference's time order); whole datasets in sequence, or the "
              "datasets of one period interleaved"), ("stream.interleave", "stream.period_years")),
    "frequency": ("rarest first: how many corpus captions name the class", ("stream.corpus",)),
    "similarity": ("a greedy nearest-neighbour walk over the base model's text embeddings of the class prompts",
                   ("stream.start",)),
    "easy_to_hard": ("the base model's zero-shot accuracy per class, highest first",
                     ("stream.difficulty_split", "stream.difficulty_samples")),
    "file": ("the concepts of a stream JSON (FiF's 29 files load as they are), fitted to the datasets present",
             ("stream.file",)),
}


@dataclass(frozen=True)
class Task:
    """One update task: its index and the concepts whose training data it holds."""

    index: int
    concepts: tuple[str, ...]


def benchmark_concepts(benchmark: Benchmark, datasets: Sequence[str] = ()) -> list[str]:
    """Every concept of the benchmark's adaptation datasets, dataset by dataset in registry order:
    each class with training images, or ``DATASET+++*`` for a retrieval set without classes.

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
        if spec.kind == "retrieval" and not spec.classnames:  # pairs without classes: the set is one concept
            out.append(concept_id(spec.name, ALL_PAIRS))
            continue
        # Classes without training images cannot be learned (FiF: 18,449 classes, 18,381 in streams):
        # leave them out of the stream; they are still evaluated.
        present = set(np.unique(benchmark.load(spec.name, "train").targets).tolist())
        missing = [c for i, c in enumerate(spec.classnames) if i not in present]
        if missing:
            log.info("%s: %d class(es) without training images left out of the stream: %s",
                     spec.name, len(missing), ", ".join(missing[:5]))
        out.extend(concept_id(spec.name, c) for i, c in enumerate(spec.classnames) if i in present)
    return out


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


def order_by_release(
    concepts: Sequence[str], benchmark: Benchmark, seed: int = 0, interleave: bool = False, period_years: int = 1
) -> list[str]:
    """Time-incremental: datasets by release year, oldest first.

    Whole datasets (default): one dataset after the other, each in its own concept order. Datasets of
    the same year come by ``release_rank`` where the benchmark gives one (FiF: the reference's time
    order), else in a seeded order. Interleaved: datasets of one calendar period
    (``year // period_years``) are spread evenly over that period's stretch of the stream: concept i
    of a dataset with n concepts sits at relative position (i + ½) / n, so every chunk of the period
    holds each dataset in proportion to its size (FiF with ``period_years=1``: the reference's 15
    period groups).

    Raises:
        ValueError: a dataset of the stream has no release year, or ``period_years < 1``.
    """
    if period_years < 1:
        raise ValueError(f"stream.period_years must be >= 1, got {period_years}")
    names = list(dict.fromkeys(split_concept(c)[0] for c in concepts))
    undated = [n for n in names if benchmark.spec(n).release_year is None]
    if undated:
        raise ValueError(
            f"stream.ordering=time needs a release year for every dataset; {', '.join(undated)} "
            "has none (set release_year in its DatasetSpec, or choose another stream.ordering)"
        )
    perm = rng_for(seed, "stream-ties", "time").permutation(len(names))
    seeded = {names[i]: rank for rank, i in enumerate(perm)}
    # A benchmark's own order of same-year datasets wins over the seed; unranked ones follow, seeded.
    tie = {d: (benchmark.spec(d).release_rank is None, benchmark.spec(d).release_rank or 0, seeded[d]) for d in names}
    size: dict[str, int] = {}
    position: dict[str, int] = {}
    for c in concepts:
        d = split_concept(c)[0]
        position[c] = size.get(d, 0)
        size[d] = position[c] + 1

    def key(c: str) -> tuple:
        d = split_concept(c)[0]
        year = benchmark.spec(d).release_year
        if interleave:
            return (year // period_years, (position[c] + 0.5) / size[d], tie[d])
        return (year, tie[d], position[c])

    return sorted(concepts, key=key)


@dataclass(frozen=True)
class Ordered:
    """A stream's concepts in order, with what the order was built from.

    Attributes:
        concepts: the ordered concepts (before chunking).
        scores: concept -> the number the ordering sorted or walked by (corpus count, zero-shot score,
            distance from the previous concept, release year); None for random, dataset and file.
        score_label: what ``scores`` are.
        note: one line on what a stream file lost to the data present (None: nothing).
    """

    concepts: list[str]
    scores: dict[str, float] | None = None
    score_label: str | None = None
    note: str | None = None


def order_stream(
    benchmark: Benchmark,
    ordering: str,
    seed: int = 0,
    reverse: bool = False,
    file: str | None = None,
    datasets: Sequence[str] = (),
    scorer: ConceptScorer | None = None,
    options: OrderingOptions = OrderingOptions(),
) -> Ordered:
    """The ordered concepts of a stream (before chunking), with their scores.

    Args:
        benchmark: whose adaptation datasets the concepts come from.
        ordering: one of :data:`ORDERINGS`.
        seed: breaks what the ordering leaves tied (see the module docstring).
        reverse: flip the finished order.
        file: the stream JSON for ``ordering="file"``; it is fitted to the data present
            (:func:`fif.data.stream_file.fit_stream`, logging one warning line on what was dropped).
        datasets: restrict to these adaptation datasets (empty = all).
        scorer: the base model's view of the concepts (:class:`fif.eval.concepts.ModelScorer`), for
            ``similarity`` and ``easy_to_hard``.
        options: the individual orderings' knobs.

    Raises:
        ValueError / KeyError: unknown ordering or dataset, bad stream file, missing model or corpus.
    """
    if ordering not in ORDERINGS:
        raise ValueError(unknown_name_message("stream.ordering", ordering, ORDERINGS))
    if ordering in MODEL_ORDERINGS and scorer is None:
        raise ValueError(f"stream.ordering={ordering} needs the base model (pass scorer=...)")
    note, scores, label = None, None, None
    if ordering == "file":
        if not file:
            raise ValueError("stream.ordering=file needs stream.file=/path/to/stream.json")
        concepts, note = fit_stream(read_stream(file), benchmark, datasets, source=f"stream file {file}")
        if note:
            log.warning(note)
    else:
        concepts = benchmark_concepts(benchmark, datasets)
    if ordering == "random":
        concepts = order_random(concepts, seed)
    elif ordering == "time":
        concepts = order_by_release(concepts, benchmark, seed, options.interleave, options.period_years)
        scores = {c: float(benchmark.spec(split_concept(c)[0]).release_year) for c in concepts}
        label = "release year"
    elif ordering in ("frequency", "similarity", "easy_to_hard"):
        concepts, scores, label = orderings.order_scored(ordering, concepts, benchmark, seed, scorer, options)
    return Ordered(concepts[::-1] if reverse else list(concepts), scores, label, note)


def order_concepts(
    benchmark: Benchmark,
    ordering: str,
    seed: int = 0,
    reverse: bool = False,
    file: str | None = None,
    datasets: Sequence[str] = (),
    scorer: ConceptScorer | None = None,
    options: OrderingOptions = OrderingOptions(),
) -> list[str]:
    """The ordered concepts of a stream (before chunking): :func:`order_stream` without the scores."""
    return order_stream(benchmark, ordering, seed, reverse, file, datasets, scorer, options).concepts


@dataclass(frozen=True)
class Stream:
    """A run's tasks and the ordering behind them (None for the zeroshot reference: nothing is ordered)."""

    tasks: list[Task] = field(default_factory=list)
    ordered: Ordered | None = None


def build_stream(
    benchmark: Benchmark,
    ordering: str,
    num_tasks: int,
    seed: int = 0,
    reverse: bool = False,
    file: str | None = None,
    datasets: Sequence[str] = (),
    reference: str = "none",
    scorer: ConceptScorer | None = None,
    options: OrderingOptions = OrderingOptions(),
) -> Stream:
    """The tasks of a run: order the benchmark's concepts (:func:`order_stream`), then chunk them.

    ``dataset`` ordering gives one task per dataset (T = number of datasets). The reference points:
    ``zeroshot`` gives no task at all (the run only evaluates the base model; nothing is ordered),
    ``oracle`` one task holding the whole stream, which then gets the whole budget.

    Raises:
        ValueError / KeyError: unknown ordering or reference, bad stream file, too few concepts.
    """
    if reference not in REFERENCES:
        raise ValueError(unknown_name_message("stream.reference", reference, REFERENCES))
    if reference == "zeroshot":
        return Stream()
    ordered = order_stream(benchmark, ordering, seed, reverse, file, datasets, scorer, options)
    concepts = ordered.concepts
    if reference == "oracle":
        return Stream([Task(0, tuple(concepts))], ordered)
    if ordering == "dataset":
        return Stream(chunk_by_dataset(concepts), ordered)
    return Stream(chunk(concepts, num_tasks), ordered)


def build_tasks(
    benchmark: Benchmark,
    ordering: str,
    num_tasks: int,
    seed: int = 0,
    reverse: bool = False,
    file: str | None = None,
    datasets: Sequence[str] = (),
    reference: str = "none",
    scorer: ConceptScorer | None = None,
    options: OrderingOptions = OrderingOptions(),
) -> list[Task]:
    """The tasks of :func:`build_stream`."""
    return build_stream(benchmark, ordering, num_tasks, seed, reverse, file, datasets, reference, scorer,
                        options).tasks


@dataclass(frozen=True)
class TaskSummary:
    """What ``fif stream show`` reports per task: concepts and training samples per dataset."""

    index: int
    concepts: dict[str, int]  # dataset -> concepts in this task (stream order of first appearance)
    samples: dict[str, int]  # dataset -> training samples in this task

    @property
    def num_concepts(self) -> int:
        return sum(self.concepts.values())

    @property
    def num_samples(self) -> int:
        return sum(self.samples.values())


def describe_tasks(tasks: Sequence[Task], benchmark: Benchmark, split: str = "train") -> list[TaskSummary]:
    """Per task: how many concepts and ``split`` samples each dataset contributes (loads the splits)."""
    out = []
    for task in tasks:
        concepts: dict[str, int] = {}
        for c in task.concepts:
            d = split_concept(c)[0]
            concepts[d] = concepts.get(d, 0) + 1
        indices = task_indices(task, benchmark, split)
        out.append(TaskSummary(task.index, concepts, {d: len(indices[d]) for d in concepts}))
    return out


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
