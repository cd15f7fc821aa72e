"""Orderings that need corpus statistics or the base model: frequency, similarity, easy-to-hard.

Each takes the stream's concepts (``DATASET+++classname``; a retrieval set is the one concept
``DATASET+++*``) and returns them reordered. Scores and walks are computed here; ties are broken by
the seed (:func:`fif.data.stream.seeded_sort`), and ``reverse`` is applied by the caller.

- **frequency** (rarest first): the number of corpus captions that mention the class name.
  Tokenisation rule (:func:`words`): case-folded, a word is a maximal run of Unicode letters or digits
  (so ``"two-tone"`` is ``two tone``); a class name is mentioned by a caption when its words appear
  there contiguously and in order; each caption counts once. A retrieval concept has no name: it
  takes the median, over every word of its (sampled) training captions, of that word's count.
- **similarity**: a greedy nearest-neighbour walk over the base model's text embeddings of the class
  prompts (the dataset's primer; cosine distance); every start is tried (or the given one) and the
  walk of shortest total distance is kept. A retrieval concept is embedded as the renormalised mean
  of its (sampled) training captions' embeddings.
- **easy_to_hard** (highest score first): the base model's zero-shot top-1 accuracy per class on the
  adaptation datasets' train (default) or test split, the classifier being the dataset's own classes
  and primer. A retrieval concept scores FiF's retrieval number (mean of image→text and text→image
  Recall@5) on FiF's evaluation subset size of that split.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from fif.core.names import unknown_name_message
from fif.core.seeding import rng_for
from fif.data.registry import Benchmark
from fif.data.specs import ALL_PAIRS, SplitData, split_concept

RETRIEVAL_CAPTION_SAMPLES = 1000  # training pairs whose captions stand for a retrieval concept
_WORD = re.compile(r"[^\W_]+")
_WALK_CELLS = 1 << 22  # (starts × concepts) entries walked at once: bounds memory for large streams


DIFFICULTY_SPLITS = ("train", "test")


@dataclass(frozen=True)
class OrderingOptions:
    """Knobs of the individual orderings (``stream.*`` in the config).

    Attributes:
        interleave: time: interleave the datasets of one period instead of whole datasets in sequence.
        period_years: time + interleave: calendar periods of this many years (``year // period_years``).
        corpus: frequency: a text file (one caption per line, ``.gz`` allowed) or a dataset of the
            benchmark whose training captions are the corpus; None = the pretraining pool's captions.
        start: similarity: the concept the walk starts from; None = try every start, keep the shortest.
        difficulty_split: easy_to_hard: the split the base model's zero-shot accuracy is measured on.
        difficulty_samples: easy_to_hard: at most this many samples per class (seeded choice).
        batch_size: encoding batch size for the model-based orderings.
        precision: autocast precision for the model-based orderings (``fp32``, ``bf16``, ``fp16``).
    """

    interleave: bool = False
    period_years: int = 1
    corpus: str | None = None
    start: str | None = None
    difficulty_split: str = "train"
    difficulty_samples: int = 100
    batch_size: int = 256
    precision: str = "fp32"


def seeded_sort(concepts: Sequence[str], key: Callable[[str], Any], seed: int, purpose: str) -> list[str]:
    """Sort ``concepts`` by ``key``; concepts with equal keys come in a seeded random order."""
    perm = rng_for(seed, "stream-ties", purpose).permutation(len(concepts))
    return sorted((concepts[i] for i in perm), key=key)



class ConceptScorer(Protocol):
    """What the model-based orderings ask of the base model (:class:`fif.eval.concepts.ModelScorer`)."""

    def embeddings(self, concepts: Sequence[str], benchmark: Benchmark, seed: int) -> np.ndarray:
        """L2-normalised text embedding (N, D) of every concept (``similarity``)."""
        ...

    def scores(self, concepts: Sequence[str], benchmark: Benchmark, seed: int) -> dict[str, float]:
        """The zero-shot score (percent) of every concept (``easy_to_hard``)."""
        ...


def order(
    ordering: str,
    concepts: Sequence[str],
    benchmark: Benchmark,
    seed: int,
    scorer: ConceptScorer | None,
    options: OrderingOptions,
) -> list[str]:
    """Dispatch: ``frequency``, ``similarity`` or ``easy_to_hard`` (see the module docstring)."""
    return order_scored(ordering, concepts, benchmark, seed, scorer, options)[0]


def order_scored(
    ordering: str,
    concepts: Sequence[str],
    benchmark: Benchmark,
    seed: int,
    scorer: ConceptScorer | None,
    options: OrderingOptions,
) -> tuple[list[str], dict[str, float], str]:
    """As :func:`order`, with what the order was built from: (concepts, score of each concept, what the
    score is). Frequency: the corpus count; easy_to_hard: the zero-shot score; similarity: the cosine
    distance from the concept before it in the walk (0 for the first)."""
    if ordering == "frequency":
        counts = concept_frequencies(concepts, benchmark, corpus_documents(benchmark, options.corpus), seed)
        return seeded_sort(concepts, counts.__getitem__, seed, "frequency"), counts, "corpus count"
    if scorer is None:
        raise ValueError(f"stream.ordering={ordering} needs the base model")
    if ordering == "similarity":
        emb = scorer.embeddings(concepts, benchmark, seed)
        walk = order_by_similarity(concepts, emb, seed, options.start)
        return walk, step_distances(concepts, emb, walk), "distance to previous"
    if ordering == "easy_to_hard":
        scores = scorer.scores(concepts, benchmark, seed)
        return seeded_sort(concepts, lambda c: -scores[c], seed, "easy_to_hard"), scores, "zero-shot score (%)"
    raise ValueError(unknown_name_message("model-based ordering", ordering, ("frequency", "similarity", "easy_to_hard")))


# ----------------------------------------------------------------------------------------------
# Frequency


def words(text: str) -> tuple[str, ...]:
    """The tokenisation rule: case-folded maximal runs of Unicode letters or digits."""
    return tuple(_WORD.findall(text.casefold()))


def document_frequencies(phrases: Iterable[tuple[str, ...]], documents: Iterable[str]) -> dict[tuple[str, ...], int]:
    """For each phrase (a word tuple), the number of documents whose words contain it contiguously.

    One pass over the documents; phrases are indexed by their first word, so the cost is about one
    dict lookup per corpus word.
    """
    counts = {p: 0 for p in phrases if p}
    by_first: dict[str, list[tuple[str, ...]]] = {}
    for p in counts:
        by_first.setdefault(p[0], []).append(p)
    for doc in documents:
        toks = words(doc)
        found = set()
        for i, tok in enumerate(toks):
            for p in by_first.get(tok, ()):
                if toks[i : i + len(p)] == p:
                    found.add(p)
        for p in found:
            counts[p] += 1
    return counts


def corpus_documents(benchmark: Benchmark, corpus: str | None) -> Iterator[str]:
    """The captions of the frequency corpus: a dataset of the benchmark (its training captions, all of
    them per sample), a text file (one caption per line; ``.gz`` read compressed), or — when None —
    the benchmark's pretraining pool.

    Raises:
        ValueError: no corpus given and no pretraining pool, or ``corpus`` is neither a dataset nor a file.
    """
    if corpus is None:
        if not benchmark.pretraining_pool:
            raise ValueError(
                f"stream.ordering=frequency: benchmark {benchmark.name!r} has no pretraining pool to count "
                "class names in; set stream.corpus=/path/to/captions.txt (one caption per line)"
            )
        corpus = benchmark.pretraining_pool
    if corpus in benchmark.datasets:
        data = benchmark.load(corpus, "train")
        return (cap for i in range(len(data)) for cap in data.captions(i))
    path = Path(corpus)
    if not path.is_file():
        raise ValueError(
            f"stream.corpus={corpus!r} is neither a file nor a dataset of benchmark {benchmark.name!r}; give a text "
            f"file with one caption per line or one of: {', '.join(benchmark.datasets)}"
        )
    return _file_lines(path)


def _file_lines(path: Path) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                yield line


def concept_frequencies(
    concepts: Sequence[str], benchmark: Benchmark, documents: Iterable[str], seed: int = 0
) -> dict[str, float]:
    """Corpus count of every concept (see the module docstring for the rule).

    Returns:
        concept -> number of captions mentioning its class name (for a retrieval concept: the median
        count of the words of its sampled training captions).
    """
    phrases: dict[str, tuple[str, ...]] = {}
    retrieval_words: dict[str, list[tuple[str, ...]]] = {}
    for c in concepts:
        dataset, classname = split_concept(c)
        if classname == ALL_PAIRS:
            data = benchmark.load(dataset, "train")
            retrieval_words[c] = [(w,) for cap in sampled_captions(data, seed) for w in words(cap)]
        else:
            phrases[c] = words(classname)
    wanted = set(phrases.values()) | {w for ws in retrieval_words.values() for w in ws}
    counts = document_frequencies(wanted, documents)
    out = {c: float(counts.get(p, 0)) for c, p in phrases.items()}
    for c, ws in retrieval_words.items():
        out[c] = float(np.median([counts[w] for w in ws])) if ws else 0.0
    return out


def sampled_captions(data: SplitData, seed: int, every_caption: bool = True) -> list[str]:
    """Captions of at most RETRIEVAL_CAPTION_SAMPLES training pairs (a seeded choice, in index order)."""
    n = len(data)
    idx = np.arange(n)
    if n > RETRIEVAL_CAPTION_SAMPLES:
        rng = rng_for(seed, "ordering-captions", data.spec.name)
        idx = np.sort(rng.choice(n, size=RETRIEVAL_CAPTION_SAMPLES, replace=False))
    if every_caption:
        return [cap for i in idx.tolist() for cap in data.captions(i)]
    return [data.captions(i)[0] for i in idx.tolist()]


# ----------------------------------------------------------------------------------------------
# Similarity


def greedy_walks(distances: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy nearest-neighbour walks from each start, all starts at once.

    From the current node, step to the closest unvisited one (lowest index on a tie).

    Args:
        distances: (n, n) pairwise distances.
        starts: (S,) start indices.

    Returns:
        ``(paths (S, n), lengths (S,))``: the visiting order and the summed step distances of each walk.
    """
    n, num = distances.shape[0], len(starts)
    rows = np.arange(num)
    paths = np.empty((num, n), dtype=np.int64)
    paths[:, 0] = starts
    visited = np.zeros((num, n), dtype=bool)
    visited[rows, starts] = True
    lengths = np.zeros(num)
    current = np.asarray(starts, dtype=np.int64)
    for k in range(1, n):
        d = np.where(visited, np.inf, distances[current])
        current = d.argmin(axis=1)
        lengths += d[rows, current]
        visited[rows, current] = True
        paths[:, k] = current
    return paths, lengths


def shortest_greedy_walk(distances: np.ndarray, start: int | None = None) -> list[int]:
    """The greedy walk from ``start``, or of all starts the one with the shortest total distance
    (the lowest start index on a tie)."""
    n = distances.shape[0]
    if start is not None:
        return greedy_walks(distances, np.array([start]))[0][0].tolist()
    best_path, best_len = None, np.inf
    per_batch = max(1, _WALK_CELLS // max(n, 1))
    for lo in range(0, n, per_batch):
        paths, lengths = greedy_walks(distances, np.arange(lo, min(n, lo + per_batch)))
        i = int(lengths.argmin())
        if lengths[i] < best_len:
            best_path, best_len = paths[i], lengths[i]
    return best_path.tolist()


def order_by_similarity(concepts: Sequence[str], embeddings: np.ndarray, seed: int = 0, start: str | None = None) -> list[str]:
    """Concepts along the shortest greedy nearest-neighbour walk over their embeddings (cosine distance).

    The seed shuffles the concepts before the walk, so it decides ties (equal distances, equal lengths).

    Raises:
        ValueError: ``start`` is not a concept of the stream.
    """
    if start is not None and start not in concepts:
        raise ValueError(f"stream.start: {unknown_name_message('concept', start, concepts, where='the stream')}")
    perm = rng_for(seed, "stream-ties", "similarity").permutation(len(concepts))
    emb = np.asarray(embeddings, dtype=np.float64)[perm]
    distances = 1.0 - emb @ emb.T
    shuffled = [concepts[i] for i in perm]
    path = shortest_greedy_walk(distances, None if start is None else shuffled.index(start))
    return [shuffled[i] for i in path]


def path_length(concepts: Sequence[str], embeddings: np.ndarray, ordered: Sequence[str]) -> float:
    """Summed cosine distance between consecutive concepts of ``ordered`` (``embeddings`` rows follow ``concepts``)."""
    return float(sum(step_distances(concepts, embeddings, ordered).values()))


def step_distances(concepts: Sequence[str], embeddings: np.ndarray, ordered: Sequence[str]) -> dict[str, float]:
    """Each concept of ``ordered`` -> its cosine distance from the concept before it (0 for the first)."""
    row = {c: i for i, c in enumerate(concepts)}
    emb = np.asarray(embeddings, dtype=np.float64)
    out = {ordered[0]: 0.0} if len(ordered) else {}
    for a, b in zip(ordered[:-1], ordered[1:]):
        out[b] = float(1.0 - emb[row[a]] @ emb[row[b]])
    return out


# ----------------------------------------------------------------------------------------------
# Easy-to-hard


# ----------------------------------------------------------------------------------------------
# Helpers


def by_dataset(concepts: Sequence[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for c in concepts:
        groups.setdefault(split_concept(c)[0], []).append(c)
    return groups


