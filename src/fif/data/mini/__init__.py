"""The procedural "mini world" benchmark: FiF in miniature, generated on the fly, no downloads.

``build_mini(...)`` (registered as the benchmark ``mini``) returns a
:class:`~fif.data.registry.Benchmark` whose loader draws a split in memory the first time it is asked
for. A split is a pure function of ``(seed, dataset, split, image_size, sizes)``: the same arguments
give identical bytes, and train and test draw from independent random streams (and, for digits, from
disjoint handwritten glyphs). Generation runs at several thousand images per second on one core at
32 px, so caching to disk is optional (``fif data materialize mini DIR`` writes FiF's layout).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, fields

import numpy as np
import torch

from fif.core.names import unknown_name_message
from fif.data.mini import render
from fif.data.mini.world import DEFAULT_LETTERS, POOL_NAME, CaptionMix, Draw, MiniDataset, Studio, catalogue
from fif.data.registry import Benchmark, MissingSplitError, register_benchmark
from fif.data.specs import DatasetSpec, InMemorySplit

__all__ = ["MiniSizes", "build_mini", "generate_split", "split_size", "world_fingerprint", "POOL_NAME", "WORLD_VERSION"]

# Bump whenever a change alters generated pixels or captions. Cached base models are keyed by it and by
# world_fingerprint(), which catches a change that forgot the bump.
WORLD_VERSION = 4

SPLITS: tuple[str, ...] = ("train", "test")
_SPLIT_CODES = {"train": 1, "test": 2}
_CHUNK_PIXELS = 4096 * 32 * 32  # images drawn per numpy pass, scaled by image area (bounds memory)


@dataclass(frozen=True)
class MiniSizes:
    """How many images each split holds (``data.options`` of the ``mini`` benchmark).

    Attributes:
        pool_size: images in the pretraining pool (train only).
        train_per_class: train images per class of an adaptation classification set.
        test_per_class: test images per class of an adaptation classification set.
        eval_size: images per split of an evaluation-only set (balanced over its classes).
        retrieval_train: train pairs of a retrieval set.
        retrieval_test: test pairs of a retrieval set.
    """

    pool_size: int = 40_000
    train_per_class: int = 200
    test_per_class: int = 60
    eval_size: int = 600
    retrieval_train: int = 2_000
    retrieval_test: int = 500

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"mini benchmark option {f.name}={value!r} must be a positive integer")


def split_size(spec: DatasetSpec, split: str, sizes: MiniSizes) -> int:
    """Number of images in ``split`` of ``spec`` under ``sizes``."""
    if spec.role == "pretraining":
        return sizes.pool_size
    if spec.kind == "retrieval":
        return sizes.retrieval_train if split == "train" else sizes.retrieval_test
    if spec.role == "eval_only":
        return max(sizes.eval_size // spec.num_classes, 1) * spec.num_classes
    per_class = sizes.train_per_class if split == "train" else sizes.test_per_class
    return per_class * spec.num_classes


def _rng(seed: int, name: str, split: str) -> np.random.Generator:
    # crc32, not hash(): Python salts str hashes per process, which would break determinism.
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(name.encode()), _SPLIT_CODES[split]]))


def generate_split(dataset: MiniDataset, split: str, seed: int = 0, image_size: int = 32, sizes: MiniSizes = MiniSizes()) -> InMemorySplit:
    """Draw one split of one mini-world dataset.

    Args:
        dataset: the dataset (from :func:`fif.data.mini.world.catalogue`).
        split: ``train`` or ``test`` (pools have only ``train``).
        seed: the benchmark seed.
        image_size: image side in pixels (16 or more; 32 and 64 are the tested sizes).
        sizes: split sizes.

    Returns:
        The split in memory (uint8 pixels, caption lists, targets; class-balanced for classification).

    Raises:
        ValueError: for an unknown split, or ``test`` of the pretraining pool.
    """
    spec = dataset.spec
    valid = ("train",) if spec.role == "pretraining" else SPLITS
    if split not in valid:
        raise MissingSplitError(f"mini dataset {spec.name!r} has no split {split!r}; valid splits: {', '.join(valid)}")
    rng = _rng(seed, spec.name, split)
    n = split_size(spec, split, sizes)
    if spec.kind == "classification":
        targets = rng.permutation(np.arange(n) % spec.num_classes)
    else:
        targets = np.full(n, -1, dtype=np.int64)
    chunk = max(64, _CHUNK_PIXELS // (image_size * image_size))
    pixels = np.empty((n, 3, image_size, image_size), dtype=np.uint8)
    texts: list[list[str]] = []
    draw = Draw(rng=rng, size=image_size, split=split)
    for start in range(0, n, chunk):
        canvas, caps = dataset.sampler(draw, targets[start : start + chunk])
        pixels[start : start + len(caps)] = render.to_uint8(canvas)
        texts.extend(caps)
    return InMemorySplit(spec=spec, split=split, pixels=torch.from_numpy(pixels), texts=texts, targets=targets)


@register_benchmark("mini")
def build_mini(
    image_size: int = 32,
    seed: int = 0,
    letters: str = DEFAULT_LETTERS,
    full_captions: int = 4,
    pair_captions: int = 0,
    shape_captions: int = 1,
    single_captions: int = 1,
    studio_shape: float = 0.45,
    studio_position: float = 0.1,
    studio_size: float = 0.12,
    pool_digits: float = 0.12,
    pool_letters: float = 0.06,
    **sizes: int,
) -> Benchmark:
    """The mini benchmark: a pretraining pool, 6 evaluation-only and 11 adaptation datasets.

    Args:
        image_size: image side in pixels (>= 16).
        seed: benchmark seed; every split is a pure function of it, the dataset and the split.
        letters: the classes of ``mini_letters``.
        full_captions: full-attribute captions per base-world image (pool and eval-only sets).
        pair_captions: shape + one attribute captions per base-world image.
        shape_captions: shape-only captions per base-world image.
        single_captions: captions naming one other attribute per base-world image.
        studio_shape, studio_position, studio_size: shares of the pool drawn as studio shots in which
            only colour and that factor vary (see :class:`fif.data.mini.world.Studio`).
        pool_digits: share of the pool that shows printed digits (the coarse version of ``mini_digits``).
        pool_letters: share of the pool that shows printed lower-case letters (the coarse version of
            ``mini_letters``' capitals; 0 gives world v3's pool).
        **sizes: fields of :class:`MiniSizes` (``pool_size``, ``train_per_class``, ...).

    Returns:
        The benchmark; splits are generated lazily on first load and cached by the Benchmark.

    Raises:
        ValueError: an unknown or invalid option, naming the valid ones.
    """
    valid = [f.name for f in fields(MiniSizes)]
    unknown = sorted(set(sizes) - set(valid))
    if unknown:

        raise ValueError(unknown_name_message("mini benchmark option (data.options)", unknown[0],
                                              ["image_size", "seed", "letters", "full_captions", "pair_captions", "shape_captions", "single_captions", "studio_shape", "studio_position", "studio_size", "pool_digits", "pool_letters", *valid]))
    if not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"mini benchmark option image_size={image_size!r} must be an integer >= 16")
    counts = {"full_captions": full_captions, "pair_captions": pair_captions, "shape_captions": shape_captions,
              "single_captions": single_captions}
    for key, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == "full_captions" else 0):
            raise ValueError(f"mini benchmark option {key}={value!r} must be an integer >= {1 if key == 'full_captions' else 0}")
    split_sizes = MiniSizes(**sizes)
    shares = {"studio_shape": studio_shape, "studio_position": studio_position, "studio_size": studio_size}
    for key, value in {**shares, "pool_digits": pool_digits, "pool_letters": pool_letters}.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            raise ValueError(f"mini benchmark option {key}={value!r} must be a number in [0, 1]")
    if sum(shares.values()) > 1:
        raise ValueError(f"mini benchmark options studio_shape + studio_position + studio_size = {sum(shares.values()):.3g} "
                         f"must be at most 1")
    if pool_digits + pool_letters > 1:
        raise ValueError(f"mini benchmark options pool_digits + pool_letters = {pool_digits + pool_letters:.3g} must be at most 1")
    studio = Studio(float(studio_shape), float(studio_position), float(studio_size))
    mix = CaptionMix(full_captions, pair_captions, shape_captions, single_captions)
    datasets = catalogue(letters, mix, studio, float(pool_digits), float(pool_letters))

    def load(spec: DatasetSpec, split: str) -> InMemorySplit:
        if spec.name not in datasets:
            raise KeyError(f"dataset {spec.name!r} is not part of the mini benchmark")
        return generate_split(datasets[spec.name], split, seed, image_size, split_sizes)

    return Benchmark(
        name="mini",
        datasets={name: d.spec for name, d in datasets.items()},
        loader=load,
        pretraining_pool=POOL_NAME,
    )


def pool_sample(**options) -> InMemorySplit:
    """A small sample of the pretraining pool under ``options`` (the ``mini`` benchmark options): 256 images
    with the same seed, image size and caption options, whatever the options' split sizes."""
    options = {k: v for k, v in options.items() if k not in {f.name for f in fields(MiniSizes)}}
    return build_mini(**options, pool_size=256).load(POOL_NAME, "train")


def world_fingerprint(**options) -> str:
    """A hash of the pretraining pool's generator under ``options`` (the ``mini`` benchmark options).

    It hashes the pixels and captions of :func:`pool_sample`, so any change to rendering or captions
    changes it. Cached base models are keyed by it.
    """

    pool = pool_sample(**options)
    digest = hashlib.sha256(pool.pixels.numpy().tobytes())
    for caps in pool.texts:
        digest.update("\x1f".join(caps).encode() + b"\x1e")
    return digest.hexdigest()[:16]
