"""Unreadable images are replaced by the next readable sample of their class, named, and capped; the
batch keeps its size and its draws, in any process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fif.data.bad_samples import BadSampleLog, GuardedSplit, TooManyBadSamplesError, guard
from fif.data.fif_benchmark import build_fif
from fif.data.mixture import MixedBatches, MixtureSampler, Pool, batch_counts
from fif.data.pool import load_pool
from fif.data.registry import Benchmark
from fif.data.specs import BadSampleError, InMemorySplit
from fif_reference import CORRUPT_JPEG, class_names, write_dataset, write_shard


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("laion")
    write_shard(folder / "00000.tar", 6, corrupt=(2,))
    write_shard(folder / "00001.tar", 6, start=6)
    return folder


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    root = tmp_path_factory.mktemp("fif_bad")
    write_dataset(root, "CUB200", class_names("bird", 2), {"train": 3, "test": 2})
    (root / "CUB200" / "cub200" / "images" / "train" / "1" / "0.jpg").write_bytes(CORRUPT_JPEG)  # class 1's first
    (root / "CUB200" / "cub200" / "images" / "test" / "0" / "1.jpg").unlink()  # a missing file counts too
    return build_fif(root, datasets=["CUB200"])


def test_a_corrupt_jpeg_in_a_shard_is_replaced_by_the_next_sample(shards, tmp_path):
    pool = load_pool(Benchmark("none", {}, loader=None), str(shards / "{00000..00001}.tar"), index_dir=tmp_path)
    assert isinstance(pool, GuardedSplit)
    raw = pool.inner
    with pytest.raises(BadSampleError, match=r"00000\.tar \(sample 2\): cannot decode image"):
        raw.images(np.array([2]), 16)
    got = pool.images(np.array([1, 2, 5]), 16)
    assert torch.equal(got[1], raw.images(np.array([3]), 16)[0])  # no class: the next sample stands in
    assert list(pool.captions(2)) == ["a web photo number 3"]  # with its own caption
    assert pool.drain() == [f"{shards / '00000.tar'} (sample 2)"] and pool.drain() == []  # reported once
    assert torch.equal(pool.images(np.array([2]), 16)[0], got[1])


def test_replacements_keep_the_class_and_the_augmentation_draws(cub):
    train = cub.load("CUB200", "train")  # targets 0 0 0 1 1 1; index 3 (class 1) is corrupt
    assert isinstance(train, GuardedSplit) and train.targets.tolist() == [0, 0, 0, 1, 1, 1]
    fresh = guard(train.inner)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a = fresh.images(np.array([0, 3, 5]), 16, train=True, generator=g1)  # finds index 3 bad mid-batch
    b = fresh.images(np.array([0, 3, 5]), 16, train=True, generator=g2)  # knows it already
    assert torch.equal(a, b) and torch.equal(g1.get_state(), g2.get_state())
    g3 = torch.Generator().manual_seed(7)
    direct = train.inner.images(np.array([0, 4, 5]), 16, train=True, generator=g3)  # 4: class 1's next sample
    assert torch.equal(a, direct)
    assert fresh.captions(3) == train.inner.captions(4)
    assert fresh.drain() == [str(train.inner.root / train.inner.paths[3])]


def test_a_missing_test_image_is_replaced_within_its_class(cub):
    test = cub.load("CUB200", "test")  # targets 0 0 1 1; index 1 is missing
    out = test.images(np.arange(4), 16)
    assert torch.equal(out[1], out[0])  # class 0's other image
    assert test.drain()[0].endswith("test/0/1.jpg") and cub.bad_samples() == []


def test_a_class_with_no_readable_image_is_an_error(tmp_path):
    root = tmp_path / "r"
    write_dataset(root, "DTD", class_names("texture", 2), {"train": 2, "test": 1})
    for i in range(2):
        (root / "DTD" / "dtd" / "images" / "train" / "0" / f"{i}.jpg").write_bytes(CORRUPT_JPEG)
    train = build_fif(root, datasets=["DTD"]).load("DTD", "train")
    with pytest.raises(BadSampleError, match="DTD/train: sample 0 .* every other sample with its target"):
        train.images(np.array([0]), 8)


def test_in_memory_splits_are_not_wrapped():
    split = InMemorySplit(None, "train", torch.zeros(1, 3, 2, 2, dtype=torch.uint8), [["x"]])  # type: ignore[arg-type]
    assert guard(split) is split


def test_mixed_batches_carry_what_they_skipped_and_stay_exact(shards, cub, tmp_path):
    pool = load_pool(Benchmark("none", {}, loader=None), str(shards), index_dir=tmp_path)
    update = Pool([(cub.load("CUB200", "train"), np.arange(6))])
    counts = batch_counts(12, 0.5, 0.5, 0.0, buffer_empty=True)
    sampler = MixtureSampler(counts, update, None, Pool([(pool, np.arange(len(pool)))]), seed=3, task=0)

    def batches():
        return MixedBatches(sampler, lambda texts: torch.zeros(len(texts), 4, dtype=torch.long), lambda x: x, 16, 2)

    first = batches()[0]  # 6 pool samples (seed 3 draws the corrupt one) + all 6 update samples
    assert first.images.shape == (12, 3, 16, 16)
    assert {source for source, _ in first.bad} == {"pretraining_pool", "CUB200"}
    again = batches()[0]
    assert torch.equal(first.images, again.images) and again.bad == ()  # known now: replaced, not re-reported


def test_the_log_counts_per_source_and_stops_past_the_cap():
    log = BadSampleLog(cap=2)
    assert log.add("CUB200", "a.jpg") and not log.add("CUB200", "a.jpg")
    log.add("pretraining_pool", "x.tar (sample 3)")
    log.check()
    log.add("CUB200", "b.jpg")
    assert log.counts() == {"CUB200": 2, "pretraining_pool": 1}
    with pytest.raises(TooManyBadSamplesError, match=r"3 unreadable image\(s\), more than data.max_bad_samples=2:\n"
                                                     r"  CUB200: a.jpg, b.jpg\n  pretraining_pool: x.tar"):
        log.check()
