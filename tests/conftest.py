"""Shared fixtures: a toy in-memory benchmark (random pixels, fast) for unit tests of streams,
mixtures and evaluation; the procedural mini benchmark is used by integration tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fif.data.registry import Benchmark
from fif.data.specs import DatasetSpec, InMemorySplit


def toy_benchmark(per_class: int = 6, size: int = 8, seed: int = 0) -> Benchmark:
    """Two classification adaptation sets, one retrieval adaptation set, one eval-only set, one pool."""
    specs = {
        "toy_a": DatasetSpec("toy_a", "classification", "adaptation", ("ant", "bee", "cat"), "a {}", release_year=2001),
        "toy_b": DatasetSpec("toy_b", "classification", "adaptation", ("one", "two"), "digit {}", release_year=1999),
        "toy_r": DatasetSpec("toy_r", "retrieval", "adaptation", release_year=2005),
        "toy_e": DatasetSpec("toy_e", "classification", "eval_only", ("red", "blue"), "{} thing"),
        "toy_pool": DatasetSpec("toy_pool", "classification", "pretraining"),
    }

    def loader(spec: DatasetSpec, split: str) -> InMemorySplit:
        rng = np.random.default_rng([seed, len(spec.name), split == "train"])
        classes = max(spec.num_classes, 1)
        n = per_class * classes * (2 if split == "train" else 1)
        if spec.role == "pretraining":
            n = 40
        targets = np.arange(n) % classes if spec.kind == "classification" and spec.num_classes else np.full(n, -1)
        pixels = torch.from_numpy(rng.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8))
        if spec.num_classes:
            texts = [[f"{spec.name} {spec.classnames[t]} #{i}", f"alt {i}"] for i, t in enumerate(targets)]
        else:
            texts = [[f"{spec.name} pair {i}", f"{spec.name} other {i}"] for i in range(n)]
        return InMemorySplit(spec, split, pixels, texts, targets)

    return Benchmark("toy", specs, loader, pretraining_pool="toy_pool")


@pytest.fixture
def toy() -> Benchmark:
    return toy_benchmark()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    thread hand-offs cost more than the math on a busy 2-core machine, and one thread is deterministic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
