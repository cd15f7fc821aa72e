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
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from fif.data.registry import Benchmark, unknown_name_message
from fif.data.specs import DatasetSpec, SplitData, split_concept
from fif.data.stream import ALL_PAIRS, DIFFICULTY_SPLITS, OrderingOptions, rng_for, seeded_sort
from fif.model.clip import Clip

RETRIEVAL_CAPTION_SAMPLES = 1000  # training pairs whose captions stand for a retrieval concept
_WORD = re.compile(r"[^\W_]+")
_WALK_CELLS = 1 << 22  # (starts × concepts) entries walked at once: bounds memory for large streams


def order(
    ordering: str,
    concepts: Sequence[str],
    benchmark: Benchmark,
    seed: int,
    clip: Clip | None,
    device: torch.device | str | None,
    options: OrderingOptions,
) -> list[str]:
    """Dispatch: ``frequency``, ``similarity`` or ``easy_to_hard`` (see the module docstring)."""
    if ordering == "frequency":
        counts = concept_frequencies(concepts, benchmark, corpus_documents(benchmark, options.corpus), seed)
        return seeded_sort(concepts, counts.__getitem__, seed, "frequency")
    if clip is None:
        raise ValueError(f"stream.ordering={ordering} needs the base model")
    device = torch.device(device) if device is not None else clip.device
    if ordering == "similarity":
        emb = concept_embeddings(clip, concepts, benchmark, device, seed, options.batch_size, options.precision)
        return order_by_similarity(concepts, emb.cpu().numpy(), seed, options.start)
    if ordering == "easy_to_hard":
        scores = zero_shot_scores(
            clip, concepts, benchmark, device, options.difficulty_split, options.difficulty_samples, seed,
            options.batch_size, options.precision,
        )
        return seeded_sort(concepts, lambda c: -scores[c], seed, "easy_to_hard")
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
            retrieval_words[c] = [(w,) for cap in _sampled_captions(data, seed) for w in words(cap)]
        else:
            phrases[c] = words(classname)
    wanted = set(phrases.values()) | {w for ws in retrieval_words.values() for w in ws}
    counts = document_frequencies(wanted, documents)
    out = {c: float(counts.get(p, 0)) for c, p in phrases.items()}
    for c, ws in retrieval_words.items():
        out[c] = float(np.median([counts[w] for w in ws])) if ws else 0.0
    return out


def _sampled_captions(data: SplitData, seed: int, every_caption: bool = True) -> list[str]:
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


@torch.no_grad()
def concept_embeddings(
    clip: Clip,
    concepts: Sequence[str],
    benchmark: Benchmark,
    device: torch.device,
    seed: int = 0,
    batch_size: int = 256,
    precision: str = "fp32",
) -> torch.Tensor:
    """L2-normalised text embedding (N, D) of every concept: its class prompt (the dataset's primer),
    or for a retrieval concept the renormalised mean of its sampled training captions."""
    from fif.evaluate import class_embeddings, encode_texts

    rows: dict[str, torch.Tensor] = {}
    with _eval_mode(clip):
        for dataset, members in _by_dataset(concepts).items():
            spec = benchmark.spec(dataset)
            if spec.kind == "retrieval":
                caps = _sampled_captions(benchmark.load(dataset, "train"), seed, every_caption=False)
                emb = encode_texts(clip, caps, batch_size, device, precision).mean(dim=0, keepdim=True)
                rows[members[0]] = torch.nn.functional.normalize(emb, dim=-1)[0]
                continue
            names = [split_concept(c)[1] for c in members]
            emb = class_embeddings(clip, names, (spec.primer,), batch_size, device, precision)
            rows.update(zip(members, emb))
    return torch.stack([rows[c] for c in concepts]).float()


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
    row = {c: i for i, c in enumerate(concepts)}
    emb = np.asarray(embeddings, dtype=np.float64)
    return float(sum(1.0 - emb[row[a]] @ emb[row[b]] for a, b in zip(ordered[:-1], ordered[1:])))


# ----------------------------------------------------------------------------------------------
# Easy-to-hard


@torch.no_grad()
def zero_shot_scores(
    clip: Clip,
    concepts: Sequence[str],
    benchmark: Benchmark,
    device: torch.device,
    split: str = "train",
    samples_per_class: int = 100,
    seed: int = 0,
    batch_size: int = 256,
    precision: str = "fp32",
) -> dict[str, float]:
    """The base model's zero-shot score (percent) of every concept on ``split``.

    A class: top-1 accuracy over at most ``samples_per_class`` of its samples (seeded choice), the
    classifier being all classes of its dataset (primer prompt). A retrieval concept: mean of
    image→text and text→image Recall@5 on FiF's evaluation subset of the split.

    Raises:
        ValueError: unknown split, ``samples_per_class < 1``, or a class without samples in the split.
    """
    if split not in DIFFICULTY_SPLITS:
        raise ValueError(f"stream.difficulty_split={split!r} is not one of {', '.join(DIFFICULTY_SPLITS)}")
    if samples_per_class < 1:
        raise ValueError(f"stream.difficulty_samples must be >= 1, got {samples_per_class}")
    scores: dict[str, float] = {}
    with _eval_mode(clip):
        for dataset, members in _by_dataset(concepts).items():
            spec, data = benchmark.spec(dataset), benchmark.load(dataset, split)
            if spec.kind == "retrieval":
                scores[members[0]] = _retrieval_score(clip, spec, data, device, seed, batch_size, precision)
            else:
                names = [split_concept(c)[1] for c in members]
                accs = _class_accuracies(clip, spec, data, names, device, samples_per_class, seed, batch_size, precision)
                scores.update(zip(members, accs))
    return scores


def _class_accuracies(
    clip: Clip, spec: DatasetSpec, data: SplitData, names: list[str], device: torch.device,
    samples_per_class: int, seed: int, batch_size: int, precision: str,
) -> list[float]:
    from fif.evaluate import class_embeddings, encode_images

    class_ids = [spec.classnames.index(n) for n in names]
    rng = rng_for(seed, "difficulty", spec.name, data.split)
    chosen = []
    for name, c in zip(names, class_ids):
        idx = np.flatnonzero(data.targets == c)
        if not len(idx):
            raise ValueError(f"stream.ordering=easy_to_hard: class {name!r} of {spec.name!r} has no {data.split!r} samples")
        if len(idx) > samples_per_class:
            idx = np.sort(rng.choice(idx, size=samples_per_class, replace=False))
        chosen.append(idx)
    indices = np.concatenate(chosen)
    class_emb = class_embeddings(clip, spec.classnames, (spec.primer,), batch_size, device, precision)
    image_emb = encode_images(clip, data, indices, batch_size, device, precision)
    predicted = (image_emb @ class_emb.t()).argmax(dim=-1).cpu().numpy()
    correct = predicted == data.targets[indices]
    bounds = np.cumsum([0] + [len(i) for i in chosen])
    return [100.0 * float(correct[lo:hi].mean()) for lo, hi in zip(bounds[:-1], bounds[1:])]


def _retrieval_score(
    clip: Clip, spec: DatasetSpec, data: SplitData, device: torch.device, seed: int, batch_size: int, precision: str
) -> float:
    from fif.evaluate import evaluate_dataset, stratified_subset, subset_size

    indices = stratified_subset(data.targets, subset_size(len(data), 1), seed)
    return evaluate_dataset(clip, spec, data, indices, batch_size, device, precision).score


# ----------------------------------------------------------------------------------------------
# Helpers


def _by_dataset(concepts: Sequence[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for c in concepts:
        groups.setdefault(split_concept(c)[0], []).append(c)
    return groups


class _eval_mode:
    """Put the model in eval mode for the block; restore its previous mode afterwards."""

    def __init__(self, clip: Clip):
        self.model = clip.model

    def __enter__(self) -> None:
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc) -> None:
        self.model.train(self.was_training)
