"""The base model's view of a stream's concepts, for the model-based orderings of :mod:`fif.data.orderings`:
text embeddings of the class prompts (``similarity``) and zero-shot scores per concept (``easy_to_hard``).

:class:`ModelScorer` is what a run hands to :func:`fif.data.stream.build_tasks`; the orderings themselves
(walks, sorts, tie-breaking) stay in the data layer and see only its two methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from fif.core.seeding import rng_for
from fif.data.orderings import by_dataset, sampled_captions
from fif.data.registry import Benchmark
from fif.data.specs import ALL_PAIRS, DatasetSpec, SplitData, split_concept
from fif.data.stream import DIFFICULTY_SPLITS, OrderingOptions
from fif.eval.zeroshot import (
    class_embeddings,
    encode_images,
    encode_texts,
    evaluate_dataset,
    stratified_subset,
    subset_size,
)
from fif.model.clip import Clip


@dataclass
class ModelScorer:
    """The base model as a :class:`fif.data.orderings.ConceptScorer`.

    Args:
        clip: the base model.
        device: where to encode (default: the model's device).
        options: batch size, precision and the ``easy_to_hard`` split and samples per class.
    """

    clip: Clip
    device: torch.device | str | None = None
    options: OrderingOptions = field(default_factory=OrderingOptions)

    def _device(self) -> torch.device:
        return torch.device(self.device) if self.device is not None else self.clip.device

    def embeddings(self, concepts: Sequence[str], benchmark: Benchmark, seed: int) -> np.ndarray:
        o = self.options
        return concept_embeddings(self.clip, concepts, benchmark, self._device(), seed, o.batch_size, o.precision).cpu().numpy()

    def scores(self, concepts: Sequence[str], benchmark: Benchmark, seed: int) -> dict[str, float]:
        o = self.options
        return zero_shot_scores(
            self.clip, concepts, benchmark, self._device(), o.difficulty_split, o.difficulty_samples, seed, o.batch_size,
            o.precision,
        )


@torch.no_grad()
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

    rows: dict[str, torch.Tensor] = {}
    with _eval_mode(clip):
        for dataset, members in by_dataset(concepts).items():
            spec = benchmark.spec(dataset)
            whole = [c for c in members if split_concept(c)[1] == ALL_PAIRS]
            if whole:  # a retrieval set taken whole: its captions stand for it
                caps = sampled_captions(benchmark.load(dataset, "train"), seed, every_caption=False)
                emb = encode_texts(clip, caps, batch_size, device, precision).mean(dim=0, keepdim=True)
                rows[whole[0]] = torch.nn.functional.normalize(emb, dim=-1)[0]
            classes = [c for c in members if c not in whole]  # also a retrieval set's classes (FSCOCO)
            if classes:
                names = [split_concept(c)[1] for c in classes]
                emb = class_embeddings(clip, names, (spec.primer,), batch_size, device, precision)
                rows.update(zip(classes, emb))
    return torch.stack([rows[c] for c in concepts]).float()


@torch.no_grad()
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
    classifier being all classes of its dataset (primer prompt); a retrieval set's class (FSCOCO) is
    scored the same way among its classes. A retrieval set taken whole (``DATASET+++*``): mean of
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
        for dataset, members in by_dataset(concepts).items():
            spec, data = benchmark.spec(dataset), benchmark.load(dataset, split)
            whole = [c for c in members if split_concept(c)[1] == ALL_PAIRS]
            if whole:
                scores[whole[0]] = _retrieval_score(clip, spec, data, device, seed, batch_size, precision)
            classes = [c for c in members if c not in whole]  # a retrieval set's classes score as classes
            if classes:
                names = [split_concept(c)[1] for c in classes]
                accs = _class_accuracies(clip, spec, data, names, device, samples_per_class, seed, batch_size, precision)
                scores.update(zip(classes, accs))
    return scores


def _class_accuracies(
    clip: Clip, spec: DatasetSpec, data: SplitData, names: list[str], device: torch.device,
    samples_per_class: int, seed: int, batch_size: int, precision: str,
) -> list[float]:

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

    indices = stratified_subset(data.targets, subset_size(len(data), 1), seed)
    return evaluate_dataset(clip, spec, data, indices, batch_size, device, precision).score


class _eval_mode:
    """Put the model in eval mode for the block; restore its previous mode afterwards."""

    def __init__(self, clip: Clip):
        self.model = clip.model

    def __enter__(self) -> None:
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc) -> None:
        self.model.train(self.was_training)
