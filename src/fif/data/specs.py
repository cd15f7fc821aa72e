"""What a dataset is (``DatasetSpec``) and the one data contract every source returns (``SplitData``).

Everything downstream (streams, the mixture sampler, evaluation) sees only these two types, so the
procedural mini world, FiF's preprocessed layout, class folders, caption manifests and WebDataset
shards are interchangeable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

Kind = Literal["classification", "retrieval"]
Role = Literal["adaptation", "eval_only", "pretraining"]

KINDS: tuple[str, ...] = ("classification", "retrieval")
ROLES: tuple[str, ...] = ("adaptation", "eval_only", "pretraining")
CONCEPT_SEP = "+++"  # FiF's stream format: "DATASET+++classname"


@dataclass(frozen=True)
class DatasetSpec:
    """Static description of one dataset.

    Attributes:
        name: unique name within its benchmark (used in streams as ``name+++classname``).
        kind: ``classification`` (top-1 zero-shot accuracy) or ``retrieval`` (Recall@k both ways).
        role: ``adaptation`` (in the update stream, counts to A_KA), ``eval_only`` (held out, counts
            to A_ZS) or ``pretraining`` (a replay pool; never evaluated).
        classnames: class names; index = target id. Empty for pools and most retrieval sets; a retrieval
            set whose pairs carry a class (FiF's FSCOCO) has them too, so streams can take it by class.
        primer: zero-shot prompt with one ``{}`` for the class name, e.g. ``"A photo of a {}, a type of bird."``.
        templates: optional extra prompts for template ensembles (each with one ``{}``).
        release_year: year the dataset appeared (time-incremental streams order by it).
        source: which reader loads it (``mini``, ``fif``, ``folder``, ``manifest``, ``wds``).
        location: where the reader finds it (a folder, file or URL pattern); None for generated data.
        description: one line for ``fif data show``.
        release_rank: order among datasets of the same ``release_year`` (FiF: the reference's time
            order); None = same-year datasets come in a seeded order.
    """

    name: str
    kind: Kind
    role: Role
    classnames: tuple[str, ...] = ()
    primer: str = "A photo of a {}."
    templates: tuple[str, ...] = ()
    release_year: int | None = None
    source: str = "mini"
    location: str | None = None
    description: str = ""
    release_rank: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"dataset {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.role not in ROLES:
            raise ValueError(f"dataset {self.name!r}: role {self.role!r} is not one of {ROLES}")
        if CONCEPT_SEP in self.name:
            raise ValueError(f"dataset name {self.name!r} must not contain {CONCEPT_SEP!r}")
        if self.kind == "classification" and self.role != "pretraining" and not self.classnames:
            raise ValueError(f"classification dataset {self.name!r} needs class names")
        for prompt in (self.primer, *self.templates):
            if prompt.count("{}") != 1:
                raise ValueError(
                    f"dataset {self.name!r}: prompt {prompt!r} must contain exactly one '{{}}' for the class name"
                )
        if len(set(self.classnames)) != len(self.classnames):
            raise ValueError(f"dataset {self.name!r}: class names must be unique")

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def prompts(self, ensemble: bool = False) -> tuple[str, ...]:
        """The prompt templates used for zero-shot classification (primer first)."""
        return (self.primer, *self.templates) if ensemble else (self.primer,)


class BadSampleError(ValueError):
    """One sample's image cannot be read (missing or undecodable file).

    Sources raise it (through a subclass that is also their own error type) from ``images`` so the
    benchmark's guard (:mod:`fif.data.bad_samples`) can skip that sample and name it.

    Attributes:
        index: the sample's index in its split.
        where: the file (or ``shard.tar (sample i)``) to name in reports.
    """

    def __init__(self, message: str, index: int = -1, where: str = ""):
        super().__init__(message)
        self.index, self.where = index, where


@runtime_checkable
class SplitData(Protocol):
    """One split of one dataset, as every source returns it.

    ``targets[i]`` is the class id of sample ``i`` (``-1`` when it has none, e.g. retrieval pairs and
    pretraining pools). ``captions(i)`` gives every caption of sample ``i`` (at least one): training
    draws one at random, evaluation uses the first (or all, for retrieval). ``images`` returns float
    images in [0, 1] of shape (B, 3, size, size); normalisation by the model's mean/std happens in the
    model wrapper, on the device.
    """

    spec: DatasetSpec
    split: str
    targets: np.ndarray

    def __len__(self) -> int: ...

    def captions(self, index: int) -> Sequence[str]: ...

    def images(
        self, indices: np.ndarray, size: int, train: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor: ...


@dataclass
class InMemorySplit:
    """A split held in memory as uint8 images (N, 3, H, W): the fast path for generated data.

    Train-time augmentation is not applied: procedural images are already varied per sample.
    """

    spec: DatasetSpec
    split: str
    pixels: torch.Tensor  # uint8 (N, 3, H, W)
    texts: list[list[str]]
    targets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        n = self.pixels.shape[0]
        if self.pixels.dtype != torch.uint8 or self.pixels.ndim != 4 or self.pixels.shape[1] != 3:
            raise ValueError(f"{self.spec.name}/{self.split}: pixels must be uint8 (N, 3, H, W)")
        if len(self.texts) != n:
            raise ValueError(f"{self.spec.name}/{self.split}: {len(self.texts)} caption lists for {n} images")
        if len(self.targets) == 0 and n:
            self.targets = np.full(n, -1, dtype=np.int64)
        self.targets = np.asarray(self.targets, dtype=np.int64)
        if self.targets.shape != (n,):
            raise ValueError(f"{self.spec.name}/{self.split}: targets must have shape ({n},)")
        if any(len(t) == 0 for t in self.texts):
            raise ValueError(f"{self.spec.name}/{self.split}: every image needs at least one caption")

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def captions(self, index: int) -> Sequence[str]:
        return self.texts[index]

    def images(
        self, indices: np.ndarray, size: int, train: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        x = self.pixels[torch.as_tensor(np.asarray(indices, dtype=np.int64))].float().div_(255.0)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return x


def concept_id(dataset: str, classname: str) -> str:
    """FiF's concept string ``DATASET+++classname``."""
    return f"{dataset}{CONCEPT_SEP}{classname}"


def split_concept(concept: str) -> tuple[str, str]:
    """Inverse of :func:`concept_id`.

    Raises:
        ValueError: if the string is not of the form ``DATASET+++classname``.
    """
    dataset, sep, classname = concept.partition(CONCEPT_SEP)
    if not sep or not dataset or not classname:
        raise ValueError(f"concept {concept!r} is not of the form 'DATASET{CONCEPT_SEP}classname'")
    return dataset, classname


ALL_PAIRS = "*"  # classname of a retrieval dataset's single concept
