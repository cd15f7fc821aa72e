"""Zero-shot classification and retrieval of a CLIP on a benchmark's datasets.

Class embeddings follow open_clip's zero-shot classifier: embed every (template, class) prompt,
L2-normalise, average over templates, normalise again. Scores are percentages: top-1 accuracy for
classification, and for retrieval the mean of image→text and text→image Recall@5 (FiF's score).

Sharded over the ranks of a data-parallel run (``ranks``): every encoding (images, class prompts,
retrieval captions) is cut into the chunks one process would encode, rank r encodes chunks r, r+W, ...
and the chunks are gathered in order on every rank (:func:`gathered`). Each chunk is encoded exactly as
one process encodes it, so the scores are one process's; only the encoding is split, W ways.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from fif.core.device import autocast_context
from fif.core.seeding import rng_for
from fif.data.loader import PersistentLoader, SplitImages, delivered
from fif.data.registry import Benchmark
from fif.data.specs import DatasetSpec, SplitData
from fif.model.clip import Clip


@dataclass
class DatasetScore:
    """One dataset's evaluation: ``score`` is the FiF number (top-1 % or mean R@5 %)."""

    dataset: str
    kind: str
    role: str
    score: float
    samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def subset_size(num_samples: int, num_classes: int, frac: float = 0.1, min_samples: int = 300) -> int:
    """FiF's evaluation subset rule: n = min(N, max(2·C, min_samples, ⌊p·N⌋))."""
    return min(num_samples, max(2 * num_classes, min_samples, int(np.floor(frac * num_samples))))


def stratified_subset(targets: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices whose class proportions match the full split (sorted; the same for the same seed).

    Each class is shuffled; samples are then taken in order of their within-class quantile
    (rank + ½) / N_c, which allocates the n draws proportionally to class sizes.
    """
    if n >= len(targets):
        return np.arange(len(targets), dtype=np.int64)
    rng = rng_for(seed, "eval-subset")
    key = np.empty(len(targets))
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        ranks = rng.permutation(len(idx))
        key[idx] = (ranks + 0.5) / len(idx)
    order = np.lexsort((rng.random(len(targets)), key))
    return np.sort(order[:n]).astype(np.int64)


def own_chunks(chunks: int, ranks: Any = None) -> range:
    """The chunk indices this rank encodes: r, r+W, ... below ``chunks`` (all of them without ``ranks``)."""
    if ranks is None:
        return range(chunks)
    return range(ranks.rank, chunks, ranks.world_size)


def gathered(encode: Callable[[int], torch.Tensor], chunks: int, ranks: Any = None) -> torch.Tensor:
    """``torch.cat([encode(0), ..., encode(chunks - 1)])``, with the chunks shared out over ``ranks``.

    Args:
        encode: chunk index → its rows (on the device).
        chunks: how many chunks.
        ranks: a :class:`~fif.train.distributed.Ranks` (rank r encodes chunks r, r+W, ...; every rank gets
            all of them, in order: a collective, called by every rank) or None / a world of size 1 (all here).

    Returns:
        The chunks' rows, concatenated in chunk order.
    """
    world = 1 if ranks is None else ranks.world_size
    if world == 1:
        return torch.cat([encode(c) for c in range(chunks)])
    mine = [encode(c) for c in own_chunks(chunks, ranks)]
    return torch.cat(ranks.gather_chunks(mine, chunks))


@torch.no_grad()
def encode_texts(
    clip: Clip, texts: Sequence[str], batch_size: int, device: torch.device, precision: str = "fp32", ranks: Any = None
) -> torch.Tensor:
    """L2-normalised text embeddings (N, D) in fp32 (chunks of ``batch_size`` shared over ``ranks``)."""

    def encode(c: int) -> torch.Tensor:
        tokens = clip.tokenize(texts[c * batch_size : (c + 1) * batch_size]).to(device)
        with autocast_context(device, precision):
            return clip.model.encode_text(tokens).float()

    return F.normalize(gathered(encode, -(-len(texts) // batch_size), ranks), dim=-1)


@torch.no_grad()
def encode_images(
    clip: Clip, data: SplitData, indices: np.ndarray, batch_size: int, device: torch.device, precision: str = "fp32",
    images: Iterable[torch.Tensor] | None = None,
    ranks: Any = None,
) -> torch.Tensor:
    """L2-normalised image embeddings (N, D) in fp32 (test-time transform).

    The images are cut in chunks of ``batch_size``; with ``ranks``, rank r decodes and encodes only chunks
    r, r+W, ... and every rank gets all the embeddings (:func:`gathered`).
    ``images``: the decoded batches of this rank's chunks, in order (e.g. from worker processes,
    :meth:`Evaluator.run`); None decodes them here.
    """
    chunks = -(-len(indices) // batch_size)
    if images is None:
        images = (data.images(indices[c * batch_size : (c + 1) * batch_size], clip.image_size, train=False)
                  for c in own_chunks(chunks, ranks))
    batches = iter(images)

    def encode(c: int) -> torch.Tensor:  # called for this rank's chunks in order: the next batch is chunk c
        batch = next(batches).to(device, non_blocking=True)  # asynchronous from pinned memory (workers on CUDA)
        with autocast_context(device, precision):
            return clip.model.encode_image(clip.normalize(batch)).float()

    return F.normalize(gathered(encode, chunks, ranks), dim=-1)


@torch.no_grad()
def class_embeddings(
    clip: Clip,
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    classes_per_batch: int | None = None,
    ranks: Any = None,
) -> torch.Tensor:
    """Zero-shot classifier (C, D): per class the renormalised mean of its normalised prompt embeddings.

    Prompts are encoded in whole classes, ``classes_per_batch`` classes × all templates per forward
    (default ``batch_size // len(templates)``), as open_clip's ``build_zero_shot_classifier`` does with
    ``num_classes_per_batch``: with the same value the two give bit-identical classifiers (a float matmul's
    rounding can depend on how rows are batched, so batching the same way is what makes it exact).
    """
    per_batch = classes_per_batch or max(1, batch_size // max(len(templates), 1))

    def encode(c: int) -> torch.Tensor:
        names = classnames[c * per_batch : (c + 1) * per_batch]
        prompts = [t.format(n) for n in names for t in templates]
        emb = encode_texts(clip, prompts, len(prompts), device, precision).view(len(names), len(templates), -1)
        return F.normalize(emb.mean(dim=1), dim=-1)

    return gathered(encode, -(-len(classnames) // per_batch), ranks)


def zero_shot_logits(image_emb: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
    """Cosine similarities (N, C) of normalised image embeddings to a zero-shot classifier.

    open_clip multiplies these by 100 before a softmax; rankings (top-k) do not depend on the scale.
    """
    return image_emb @ class_emb.t().contiguous()  # (D, C) contiguous like open_clip: same matmul kernel, same bits


ClassifierKey = tuple[tuple[str, ...], tuple[str, ...]]


class ClassifierCache:
    """Zero-shot classifiers of one evaluation, keyed by (class names, templates).

    Datasets that share both (e.g. domains of one label space with the same prompts) embed their class
    prompts once per evaluation. Create a new cache whenever the weights change.
    """

    def __init__(self) -> None:
        self._store: dict[ClassifierKey, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def get(
        self, clip: Clip, classnames: Sequence[str], templates: Sequence[str], batch_size: int,
        device: torch.device, precision: str = "fp32", ranks: Any = None,
    ) -> torch.Tensor:
        key = (tuple(classnames), tuple(templates))  # the same keys in the same order on every rank
        if key in self._store:
            self.hits += 1
        else:
            self.misses += 1
            self._store[key] = class_embeddings(clip, classnames, templates, batch_size, device, precision, ranks=ranks)
        return self._store[key]


def topk_accuracy(image_emb: torch.Tensor, class_emb: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent for each k (k capped at the number of classes)."""
    logits = zero_shot_logits(image_emb, class_emb)
    out = {}
    for k in ks:
        kk = min(k, class_emb.shape[0])
        hit = (logits.topk(kk, dim=-1).indices == targets.view(-1, 1)).any(dim=-1)
        out[f"top{k}"] = 100.0 * hit.float().mean().item()
    return out


def retrieval_recall(
    image_emb: torch.Tensor, text_emb: torch.Tensor, text_owner: torch.Tensor, ks=(1, 5, 10)
) -> dict[str, float]:
    """Recall@k (percent) both ways with several captions per image.

    image→text: an image is a hit if any of its captions ranks in the top k.
    text→image: a caption is a hit if its own image ranks in the top k.

    Args:
        image_emb: (N, D) normalised; text_emb: (M, D) normalised; text_owner: (M,) image index of each caption.
    """
    sim = image_emb @ text_emb.t()  # (N, M)
    out = {}
    owner_match = text_owner.view(1, -1) == torch.arange(image_emb.shape[0], device=sim.device).view(-1, 1)
    for k in ks:
        k_t = min(k, sim.shape[1])
        top_t = sim.topk(k_t, dim=1).indices  # (N, k)
        i2t = owner_match.gather(1, top_t).any(dim=1).float().mean()
        k_i = min(k, sim.shape[0])
        top_i = sim.t().topk(k_i, dim=1).indices  # (M, k)
        t2i = (top_i == text_owner.view(-1, 1)).any(dim=1).float().mean()
        out[f"i2t_r{k}"] = 100.0 * i2t.item()
        out[f"t2i_r{k}"] = 100.0 * t2i.item()
    return out


def evaluate_dataset(
    clip: Clip,
    spec: DatasetSpec,
    data: SplitData,
    indices: np.ndarray,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    ensemble: bool = False,
    class_emb: torch.Tensor | None = None,
    classifiers: ClassifierCache | None = None,
    images: Iterable[torch.Tensor] | None = None,
    ranks: Any = None,
) -> DatasetScore:
    """Score one dataset on the samples ``indices`` of its test split.

    The zero-shot classifier is ``class_emb`` if given, else taken from (or added to) ``classifiers``,
    else built here. ``images``: this rank's decoded image batches, as :func:`encode_images` takes them.
    With ``ranks`` (every rank calls it) the encoding is shared out; every rank gets the score.
    """
    t0 = time.perf_counter()
    image_emb = encode_images(clip, data, indices, batch_size, device, precision, images, ranks)
    if spec.kind == "classification":
        if class_emb is None:
            cache = classifiers if classifiers is not None else ClassifierCache()
            class_emb = cache.get(clip, spec.classnames, spec.prompts(ensemble), batch_size, device, precision, ranks)
        targets = torch.as_tensor(data.targets[indices], device=image_emb.device)
        metrics = topk_accuracy(image_emb, class_emb, targets)
        score = metrics["top1"]
    else:
        texts, owner = [], []
        for j, i in enumerate(indices.tolist()):
            caps = list(data.captions(i))
            texts.extend(caps)
            owner.extend([j] * len(caps))
        text_emb = encode_texts(clip, texts, batch_size, device, precision, ranks)
        metrics = retrieval_recall(image_emb, text_emb, torch.as_tensor(owner, device=text_emb.device))
        score = 0.5 * (metrics["i2t_r5"] + metrics["t2i_r5"])
    return DatasetScore(spec.name, spec.kind, spec.role, score, len(indices), metrics, time.perf_counter() - t0)


class Evaluator:
    """Evaluates a model on a benchmark's adaptation and eval-only datasets.

    Subsets (FiF rule, class-stratified) are drawn once from the evaluation seed and reused at every
    evaluation, so scores along the stream are comparable. With ``num_workers`` > 0, images are decoded
    ahead in worker processes that start at the first evaluation and serve every later one (call
    :meth:`close` when done); the scores are the same with any number of workers.
    """

    def __init__(
        self,
        benchmark: Benchmark,
        datasets: Sequence[str] = (),
        batch_size: int = 256,
        subset_frac: float = 0.1,
        min_samples: int = 300,
        ensemble: bool = False,
        seed: int = 0,
        split: str = "test",
        num_workers: int = 0,
    ):
        self.benchmark = benchmark
        names = list(datasets) or [s.name for s in benchmark.datasets.values() if s.role in ("adaptation", "eval_only")]
        self.specs = [benchmark.spec(n) for n in names]
        for s in self.specs:
            if s.role == "pretraining":
                raise ValueError(f"eval.datasets: {s.name!r} is a pretraining pool, not an evaluation dataset")
        self.batch_size, self.ensemble, self.split = batch_size, ensemble, split
        self.subset_frac, self.min_samples, self.seed = subset_frac, min_samples, seed
        self._subsets: dict[str, np.ndarray] = {}
        self.last_cache = ClassifierCache()
        self.num_workers = num_workers
        self._loader: PersistentLoader | None = None

    def indices(self, spec: DatasetSpec, subset: bool) -> np.ndarray:
        data = self.benchmark.load(spec.name, self.split)
        if not subset:
            return np.arange(len(data), dtype=np.int64)
        if spec.name not in self._subsets:
            n = subset_size(len(data), max(spec.num_classes, 1), self.subset_frac, self.min_samples)
            self._subsets[spec.name] = stratified_subset(data.targets, n, self.seed)
        return self._subsets[spec.name]

    @torch.no_grad()
    def run(
        self, clip: Clip, device: torch.device, subset: bool, precision: str = "fp32", ranks: Any = None
    ) -> list[DatasetScore]:
        """Score every dataset (model in eval mode; restored to its previous mode afterwards).

        Class embeddings are computed once per call and shared by datasets with the same class names and
        templates (``self.last_cache`` keeps the counts). With ``ranks`` of a data-parallel run, every rank
        calls it with the same weights: each encodes its share of every dataset, and all get the scores.
        """
        was_training = clip.model.training
        clip.model.eval()
        self.last_cache = ClassifierCache()
        try:
            splits = [self.benchmark.load(spec.name, self.split) for spec in self.specs]
            indices = [self.indices(spec, subset) for spec in self.specs]
            batches = self.image_batches(splits, indices, clip.image_size, device, ranks)  # every dataset's, in order
            return [
                evaluate_dataset(
                    clip, spec, data, idx, self.batch_size, device, precision, self.ensemble,
                    classifiers=self.last_cache, ranks=ranks,
                    images=itertools.islice(batches, len(own_chunks(-(-len(idx) // self.batch_size), ranks))),
                )
                for spec, data, idx in zip(self.specs, splits, indices)
            ]
        finally:
            clip.model.train(was_training)

    def image_batches(
        self, splits: Sequence[SplitData], indices: Sequence[np.ndarray], image_size: int, device: torch.device,
        ranks: Any = None,
    ) -> Iterator[torch.Tensor]:
        """The test-time images of every dataset's ``indices`` in chunks of ``batch_size``, dataset after
        dataset (with ``ranks``, only this rank's chunks: :func:`own_chunks`): decoded ahead by the
        evaluator's workers (started at the first call), or here."""
        if self._loader is None:
            self._loader = PersistentLoader(self.num_workers, pin_memory=device.type == "cuda")
        served = self._loader.dataset
        same = served is not None and served.image_size == image_size and len(served.splits) == len(splits) and all(
            a is b for a, b in zip(served.splits, splits))  # the workers hold copies of the splits they started with
        if not same:
            self._loader.start(SplitImages(splits, image_size))
        size = self.batch_size
        keys = [(d, idx[c * size : (c + 1) * size]) for d, idx in enumerate(indices)
                for c in own_chunks(-(-len(idx) // size), ranks)]
        return delivered(self._loader.iterate(keys), [splits[d] for d, _ in keys])  # unreadable files reach the run

    def close(self) -> None:
        """Stop the evaluation workers (a later evaluation starts new ones)."""
        if self._loader is not None:
            self._loader.close()


@dataclass
class EvalResult:
    """What :func:`evaluate_config` returns: per-dataset scores, the A_KA / A_ZS / GM point, timing."""

    scores: list[DatasetScore]
    point: dict[str, float | None]
    seconds: float
    arch: str
    pretrained: str | None
    benchmark: str
    subset: bool
    precision: str
    device: str

    def to_dict(self) -> dict:
        images = sum(s.samples for s in self.scores)
        return {
            "arch": self.arch, "pretrained": self.pretrained, "benchmark": self.benchmark, "subset": self.subset,
            "precision": self.precision, "device": self.device, "seconds": round(self.seconds, 3),
            "images_per_second": round(images / self.seconds, 2) if self.seconds > 0 else None,
            **self.point,
            "datasets": [
                {"dataset": s.dataset, "kind": s.kind, "role": s.role, "score": s.score, "samples": s.samples,
                 "seconds": round(s.seconds, 3), "metrics": s.metrics}
                for s in self.scores
            ],
        }


