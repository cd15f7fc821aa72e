import numpy as np
import pytest
import torch

from fif.data.batch import Batch
from fif.data.mixture import MixedBatches, MixtureSampler, Pool, batch_counts


@pytest.mark.parametrize("b", [1, 7, 128, 512, 1000])
@pytest.mark.parametrize("lam", [(0.33, 0.34, 0.33), (0.0, 1.0, 0.0), (0.5, 0.25, 0.25), (0.1, 0.8, 0.1)])
def test_counts_sum_and_round(b, lam):
    c = batch_counts(b, *lam)
    assert c.total == b
    for got, want in zip((c.pretraining, c.update, c.buffer), lam):
        assert abs(got - want * b) < 1.0
    c0 = batch_counts(b, *lam, buffer_empty=True)
    assert c0.buffer == 0 and c0.total == b


def test_fif_default_counts():
    c = batch_counts(512, 0.33, 0.34, 0.33)
    assert (c.pretraining, c.update, c.buffer) == (169, 174, 169)
    c0 = batch_counts(512, 0.33, 0.34, 0.33, buffer_empty=True)
    assert c0.buffer == 0 and c0.update > c0.pretraining  # buffer share split by λ_D : λ_P


def _sampler(toy, task=1, seed=0, counts=None):
    a, b, pool = toy.load("toy_a", "train"), toy.load("toy_b", "train"), toy.load("toy_pool", "train")
    update = Pool([(a, np.flatnonzero(a.targets == 0))])
    buffer = Pool([(b, np.arange(len(b))), (a, np.flatnonzero(a.targets == 2))])
    counts = counts or batch_counts(10, 0.3, 0.4, 0.3)
    return MixtureSampler(counts, update, buffer, Pool([(pool, np.arange(len(pool)))]), seed=seed, task=task)


def test_plan_is_pure_function_of_seed_task_step(toy):
    s1, s2 = _sampler(toy), _sampler(toy)
    for step in (0, 3, 17):
        p1, p2 = s1.plan(step), s2.plan(step)
        for k in p1:
            np.testing.assert_array_equal(p1[k], p2[k])
    assert not np.array_equal(_sampler(toy, seed=1).plan(0)["update"], s1.plan(0)["update"])


def test_update_samples_cover_pool_each_epoch(toy):
    s = _sampler(toy)
    n_update = len(s.pools["update"])
    per_step = s.counts.update
    seen = np.concatenate([s.plan(k)["update"] for k in range(n_update)])  # n_update epochs' worth
    counts = np.bincount(seen, minlength=n_update)
    assert (counts == per_step).all()  # without replacement within each epoch


def test_batches_have_exact_composition(toy):
    s = _sampler(toy)
    batches = MixedBatches(s, lambda texts: torch.zeros(len(texts), 4, dtype=torch.long), lambda x: x, 8, 50)
    for k in range(50):
        batch = batches[k]
        assert isinstance(batch, Batch)
        src = batch.source.tolist()
        assert src.count(Batch.PRETRAINING) == 3 and src.count(Batch.UPDATE) == 4 and src.count(Batch.BUFFER) == 3
        assert batch.images.shape == (10, 3, 8, 8)
    torch.testing.assert_close(batches[7].images, MixedBatches(_sampler(toy), batches.tokenizer, batches.normalize, 8, 50)[7].images)


def test_buffer_draws_only_past_data(toy):
    s = _sampler(toy)
    seg_targets = []
    for k in range(20):
        for split, local, _ in s.pools["buffer"].locate(s.plan(k)["buffer"]):
            seg_targets.append((split.spec.name, set(split.targets[local].tolist())))
    for name, targets in seg_targets:
        assert name == "toy_b" or targets <= {2}


def test_missing_pool_and_empty_buffer_errors(toy):
    a = toy.load("toy_a", "train")
    update = Pool([(a, np.arange(len(a)))])
    with pytest.raises(ValueError, match="data.mixture.pool"):
        MixtureSampler(batch_counts(10, 0.5, 0.5, 0.0), update, None, None)
    with pytest.raises(ValueError, match="buffer is empty"):
        MixtureSampler(batch_counts(10, 0.0, 0.5, 0.5), update, None, None)


def test_pool_subsample_keeps_membership(toy):
    a = toy.load("toy_a", "train")
    pool = Pool([(a, np.arange(10)), (a, np.arange(20, 30))])
    sub = pool.subsample(5, np.random.default_rng(0))
    assert len(sub) == 5
    allowed = set(range(10)) | set(range(20, 30))
    assert all(set(idx.tolist()) <= allowed for _, idx in sub.segments)


def test_pool_batches_is_one_seeded_pass_over_the_pool(toy):
    from fif.data.mixture import pool_batches

    a = toy.load("toy_a", "train")
    pool = Pool([(a, np.flatnonzero(a.targets == 1)), (a, np.flatnonzero(a.targets == 2))])
    texts = []

    def tokenizer(batch_texts):
        texts.append(list(batch_texts))
        return torch.zeros(len(batch_texts), 4, dtype=torch.long)

    batches = list(pool_batches(pool, 5, tokenizer, lambda x: x, 8, seed=0, purpose=("task-hook", 1)))
    assert [len(b) for b in batches] == [5] * (len(pool) // 5) + ([len(pool) % 5] if len(pool) % 5 else [])
    assert all((b.source == Batch.UPDATE).all() for b in batches)
    images = torch.cat([b.images for b in batches])
    expected = a.images(np.concatenate([idx for _, idx in pool.segments]), 8)
    order = [next(i for i in range(len(expected)) if torch.equal(expected[i], img)) for img in images]
    assert sorted(order) == list(range(len(pool))) and order != list(range(len(pool)))  # each once, shuffled
    again = list(pool_batches(pool, 5, tokenizer, lambda x: x, 8, seed=0, purpose=("task-hook", 1)))
    assert all(torch.equal(x.images, y.images) for x, y in zip(batches, again))
    assert texts[: len(batches)] == texts[len(batches) :]  # the same captions too
    other = pool_batches(pool, 5, tokenizer, lambda x: x, 8, seed=1, purpose=("task-hook", 1))
    assert not torch.equal(images, torch.cat([b.images for b in other]))


def test_concept_labels_name_each_sample_by_its_concept(toy):
    from fif.data.mixture import concept_labels

    a, r = toy.load("toy_a", "train"), toy.load("toy_r", "train")
    pool = Pool([(a, np.flatnonzero(a.targets != 0)), (r, np.arange(4))])
    concepts = ["toy_r+++*", "toy_a+++cat", "toy_a+++bee"]
    labels = concept_labels(pool, concepts)
    expected_a = [2 if t == 1 else 1 for t in a.targets[a.targets != 0]]
    assert labels.tolist() == expected_a + [0] * 4
    assert (concept_labels(pool, ["toy_a+++bee"]) == -1).sum() == len(pool) - (a.targets == 1).sum()


def test_pool_batches_carry_the_labels(toy):
    from fif.data.mixture import concept_labels, pool_batches

    a = toy.load("toy_a", "train")
    pool = Pool([(a, np.arange(len(a)))])
    labels = concept_labels(pool, ["toy_a+++ant", "toy_a+++bee", "toy_a+++cat"])
    tokenizer = lambda texts: torch.zeros(len(texts), 4, dtype=torch.long)  # noqa: E731
    batches = list(pool_batches(pool, 4, tokenizer, lambda x: x, 8, seed=0, purpose=("t",), labels=labels))
    images = torch.cat([b.images for b in batches])
    got = torch.cat([b.labels for b in batches])
    for img, label in zip(images, got):  # each image's label is its own target
        i = next(i for i in range(len(a)) if torch.equal(a.images(np.array([i]), 8)[0], img))
        assert label == a.targets[i]
    assert all(b.labels is None for b in pool_batches(pool, 4, tokenizer, lambda x: x, 8, seed=0, purpose=("t",)))


def test_pool_captions_are_a_seeded_sample_of_distinct_samples(toy):
    from fif.core.seeding import rng_for
    from fif.data.mixture import pool_captions

    p = toy.load("toy_pool", "train")
    pool = Pool([(p, np.arange(len(p)))])
    texts = pool_captions(pool, 10, rng_for(0, "reference-texts"))
    assert len(texts) == 10 and texts == pool_captions(pool, 10, rng_for(0, "reference-texts"))
    assert texts != pool_captions(pool, 10, rng_for(1, "reference-texts"))
    assert len(pool_captions(pool, 1000, rng_for(0, "x"))) == len(pool)  # capped by the pool
    owners = {c.split("#")[-1] if "#" in c else c.split()[-1] for c in texts}
    assert len(owners) == 10  # distinct samples


class _Augmenting:
    """A split whose training images are noise drawn from the generator (like a random crop's box), counting
    the rows it decodes."""

    def __init__(self, inner):
        self.inner, self.spec, self.targets, self.decoded = inner, inner.spec, inner.targets, 0

    def __len__(self):
        return len(self.inner)

    def captions(self, i):
        return self.inner.captions(i)

    def images(self, indices, size, train=False, generator=None):
        self.decoded += len(indices)
        x = self.inner.images(indices, size)
        return x + torch.rand(x.shape, generator=generator) if train else x


def _augmenting_batches(toy, texts: list):
    s = _sampler(toy)
    for source, pool in s.pools.items():
        pool.segments = [(_Augmenting(split), idx) for split, idx in pool.segments]

    def tokenizer(batch_texts):
        texts.append(list(batch_texts))
        return torch.arange(len(batch_texts)).view(-1, 1)

    return MixedBatches(s, tokenizer, lambda x: x, 8, 20)


def _decoded(batches) -> int:
    return sum(split.decoded for pool in batches.sampler.pools.values() for split, _ in pool.segments)


@pytest.mark.parametrize("world", [2, 3])
def test_each_rank_decodes_only_its_rows_of_the_one_process_batch(toy, world):
    texts: list = []
    batches = _augmenting_batches(toy, texts)
    for step in (0, 5):
        whole = batches[step]
        assert _decoded(batches) == 10
        whole_texts = texts[-1]
        for rank in range(world):
            before = _decoded(batches)
            part = batches.rows(step, rank, world)
            assert _decoded(batches) - before == len(range(rank, 10, world))  # its rows, and no other
            assert torch.equal(part.images, whole.images[rank::world])  # augmentation drawn per row
            assert torch.equal(part.source, whole.source[rank::world])
            assert texts[-1] == whole_texts[rank::world]  # captions drawn per row
        for split, _ in (seg for pool in batches.sampler.pools.values() for seg in pool.segments):
            split.decoded = 0


def test_augmentation_differs_per_row_and_step(toy):
    batches = _augmenting_batches(toy, [])
    a, b = batches[0], batches[1]
    pool = batches.sampler.pools["pretraining"].segments[0][0].inner  # rows 0-2: the pretraining rows
    noise = a.images[:3] - pool.images(batches.sampler.plan(0)["pretraining"], 8)
    assert noise.abs().max() > 0 and not torch.allclose(noise[0], noise[1], atol=1e-3)  # a draw per row, not one per batch
    assert not torch.equal(a.images, b.images)
