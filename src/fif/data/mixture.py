"""Per-batch mixture of the pretraining pool, the current task and the buffer of all earlier tasks.

Every batch holds exactly the counts of :func:`batch_counts`. Which samples a batch holds is a pure
function of (run seed, task, step), so a resumed run draws the same batches without saving any sampler
state beyond the step counter:

- current task and pretraining pool: epoch-wise permutations (seeded per task and epoch) read as one
  endless sequence; step k takes positions [k·n, (k+1)·n) — sampling without replacement within an
  epoch, cycling when the pool is smaller than needed;
- buffer: uniform with replacement over the union of all earlier tasks' training data (FiF's buffer
  has no capacity; ``buffer_cap`` optionally subsamples it once per task).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from fif.core.seeding import rng_for
from fif.data.bad_samples import drain
from fif.data.batch import Batch
from fif.data.specs import SplitData, concept_id
from fif.data.stream import ALL_PAIRS

SOURCES = ("pretraining", "update", "buffer")
SOURCE_CODE = {"pretraining": Batch.PRETRAINING, "update": Batch.UPDATE, "buffer": Batch.BUFFER}


@dataclass(frozen=True)
class MixtureCounts:
    pretraining: int
    update: int
    buffer: int

    @property
    def total(self) -> int:
        return self.pretraining + self.update + self.buffer


def batch_counts(
    batch_size: int, pretraining: float, update: float, buffer: float, buffer_empty: bool = False
) -> MixtureCounts:
    """Samples per source in one batch: round(λ·B) by the largest-remainder method.

    With an empty buffer (task 0) its share goes to the update data and the pretraining pool in
    proportion to their λ's, as in FiF. Ties in the remainder go to update, then pretraining, then
    buffer, so the result is deterministic and always sums to ``batch_size``.

    Example: B=512, λ=(0.33, 0.34, 0.33) → 169 / 174 / 169.
    """
    lam = {"pretraining": pretraining, "update": update, "buffer": 0.0 if buffer_empty else buffer}
    total = sum(lam.values())
    if total <= 0:
        raise ValueError("data.mixture: all shares are zero")
    exact = {k: v / total * batch_size for k, v in lam.items()}
    counts = {k: int(np.floor(v)) for k, v in exact.items()}
    left = batch_size - sum(counts.values())
    tie_order = ["update", "pretraining", "buffer"]
    by_remainder = sorted(tie_order, key=lambda k: (-(exact[k] - counts[k]), tie_order.index(k)))
    for k in by_remainder[:left]:
        counts[k] += 1
    return MixtureCounts(**counts)


class Pool:
    """Samples from several splits seen as one indexed sequence (e.g. a task spanning datasets)."""

    def __init__(self, segments: Sequence[tuple[SplitData, np.ndarray]]):
        self.segments = [(split, np.asarray(idx, dtype=np.int64)) for split, idx in segments if len(idx)]
        self.offsets = np.cumsum([0] + [len(idx) for _, idx in self.segments])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def subsample(self, n: int, rng: np.random.Generator) -> "Pool":
        """A uniform subsample of ``n`` samples (without replacement), keeping segment order."""
        if n >= len(self):
            return self
        keep = np.sort(rng.choice(len(self), size=n, replace=False))
        segs = []
        for s, (split, idx) in enumerate(self.segments):
            lo, hi = self.offsets[s], self.offsets[s + 1]
            local = keep[(keep >= lo) & (keep < hi)] - lo
            segs.append((split, idx[local]))
        return Pool(segs)

    def locate(self, positions: np.ndarray) -> list[tuple[SplitData, np.ndarray, np.ndarray]]:
        """Group pool positions by segment: (split, split-local indices, where in ``positions``)."""
        seg = np.searchsorted(self.offsets, positions, side="right") - 1
        out = []
        for s in np.unique(seg):
            where = np.flatnonzero(seg == s)
            split, idx = self.segments[s]
            out.append((split, idx[positions[where] - self.offsets[s]], where))
        return out


def _epoch_positions(size: int, start: int, count: int, seed: int, purpose: tuple) -> np.ndarray:
    """Positions [start, start+count) of an endless sequence of seeded permutations of range(size)."""
    out = np.empty(count, dtype=np.int64)
    filled = 0
    while filled < count:
        epoch, offset = divmod(start + filled, size)
        perm = rng_for(seed, *purpose, "epoch", epoch).permutation(size)
        take = min(count - filled, size - offset)
        out[filled : filled + take] = perm[offset : offset + take]
        filled += take
    return out


class MixtureSampler:
    """Which samples go into batch ``step`` of one task (a pure function of seed, task and step)."""

    def __init__(
        self,
        counts: MixtureCounts,
        update: Pool,
        buffer: Pool | None = None,
        pretraining: Pool | None = None,
        seed: int = 0,
        task: int = 0,
    ):
        if counts.update and not len(update):
            raise ValueError(f"task {task}: the current task has no training samples")
        if counts.buffer and (buffer is None or not len(buffer)):
            raise ValueError(f"task {task}: the mixture asks for buffer samples but the buffer is empty")
        if counts.pretraining and (pretraining is None or not len(pretraining)):
            raise ValueError(
                "data.mixture.pretraining > 0 but there is no pretraining pool; set data.mixture.pool "
                "or data.mixture.pretraining=0 (and raise update/buffer so the shares sum to 1)"
            )
        self.counts, self.seed, self.task = counts, seed, task
        self.pools = {"update": update, "buffer": buffer, "pretraining": pretraining}

    def plan(self, step: int) -> dict[str, np.ndarray]:
        """Pool positions of each source in batch ``step``."""
        out = {}
        n = self.counts.update
        out["update"] = _epoch_positions(len(self.pools["update"]), step * n, n, self.seed, ("update", self.task))
        if self.counts.pretraining:
            n = self.counts.pretraining
            pool = self.pools["pretraining"]
            out["pretraining"] = _epoch_positions(len(pool), step * n, n, self.seed, ("pretraining", self.task))
        if self.counts.buffer:
            rng = rng_for(self.seed, "buffer", self.task, step)
            out["buffer"] = rng.integers(0, len(self.pools["buffer"]), size=self.counts.buffer)
        return out


class MixedBatches(torch.utils.data.Dataset):
    """Item k is the whole training batch of step k (images, tokens, sources) on the CPU.

    Row j of batch k is a pure function of (run seed, task, k, j): which sample (:class:`MixtureSampler`),
    its augmentation (a generator seeded per row) and its caption (one uniform draw per row). So a rank
    of a data-parallel run builds only its own rows (:meth:`rows`) and still gets exactly the rows the
    one-process batch has, and a resumed run gets the same batch k. Wrapped in a DataLoader with
    ``batch_size=None`` this prefetches batches in worker processes for file-backed data.
    """

    def __init__(self, sampler: MixtureSampler, tokenizer, normalize, image_size: int, num_steps: int):
        self.sampler, self.tokenizer, self.normalize = sampler, tokenizer, normalize
        self.image_size, self.num_steps = image_size, num_steps

    def __len__(self) -> int:
        return self.num_steps

    def __getitem__(self, step: int) -> Batch:
        return self.rows(step, 0, 1)

    def rows(self, step: int, rank: int, world_size: int) -> Batch:
        """Rows ``rank, rank + world_size, ...`` of batch ``step`` (the whole batch for ``(0, 1)``), built
        without decoding any other row.

        Global row order is pretraining, update, buffer (:data:`SOURCES`), each in plan order.
        """
        plan = self.sampler.plan(step)
        total = sum(len(p) for p in plan.values())
        # Per-row draws, taken for the whole batch so that row j's do not depend on which rows are built.
        aug_seeds = rng_for(self.sampler.seed, "augment", self.sampler.task, step).integers(2**62, size=total)
        caption_u = rng_for(self.sampler.seed, "caption", self.sampler.task, step).random(total)
        mine = np.arange(rank, total, world_size)
        images = torch.empty(len(mine), 3, self.image_size, self.image_size)
        texts: list[str] = [""] * len(mine)
        sources = torch.empty(len(mine), dtype=torch.int8)
        bad: list[tuple[str, str]] = []
        first = 0  # global row of the source's first sample
        for source in SOURCES:
            if source not in plan:
                continue
            positions = plan[source]
            # this rank's rows of the source: global rows first + i with (first + i) % world_size == rank
            local_rows = np.arange((rank - first) % world_size, len(positions), world_size)
            out_rows = (first + local_rows - rank) // world_size
            sources[torch.as_tensor(out_rows)] = SOURCE_CODE[source]
            for split, local, where in self.sampler.pools[source].locate(positions[local_rows]):
                for w, i in zip(where.tolist(), local.tolist()):
                    row = first + int(local_rows[w])
                    gen = torch.Generator().manual_seed(int(aug_seeds[row]))
                    images[out_rows[w]] = split.images(np.array([i]), self.image_size, train=True, generator=gen)[0]
                    bad.extend((split.spec.name, f) for f in drain(split))  # images first: captions follow a replacement
                    caps = split.captions(i)
                    texts[out_rows[w]] = caps[int(caption_u[row] * len(caps))] if len(caps) > 1 else caps[0]
            first += len(positions)
        return Batch(images=self.normalize(images), tokens=self.tokenizer(texts), source=sources, bad=tuple(bad))


def pool_batches(
    pool: Pool, batch_size: int, tokenizer, normalize, image_size: int, seed: int, purpose: tuple,
    labels: np.ndarray | None = None,
) -> Iterator[Batch]:
    """One pass over ``pool`` in a seeded random order, ``batch_size`` samples at a time (CPU tensors).

    For task hooks that read a task's own data (EWC's Fisher pass, MAS's importance pass): the order and
    the caption of each sample (one of its captions, as in training) come from ``rng_for(seed, *purpose)``,
    so the same seed and purpose give the same batches, apart from the training batches' draws. Images
    get the test-time transform (no augmentation). Loaded lazily: a hook that stops early reads no more.
    The last batch may be smaller. ``labels`` (one per pool position) become the batches' ``labels``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = rng_for(seed, *purpose)
    order = rng.permutation(len(pool))
    for start in range(0, len(order), batch_size):
        positions = order[start : start + batch_size]
        images = torch.empty(len(positions), 3, image_size, image_size)
        texts: list[str] = [""] * len(positions)
        for split, local, where in pool.locate(positions):
            images[torch.as_tensor(where)] = split.images(local, image_size, train=False)
            for w, i in zip(where.tolist(), local.tolist()):
                caps = split.captions(i)
                texts[w] = caps[int(rng.integers(len(caps)))] if len(caps) > 1 else caps[0]
        yield Batch(
            images=normalize(images),
            tokens=tokenizer(texts),
            source=torch.full((len(positions),), Batch.UPDATE, dtype=torch.int8),
            labels=None if labels is None else torch.as_tensor(labels[positions], dtype=torch.int64),
        )


def concept_labels(pool: Pool, concepts: Sequence[str]) -> np.ndarray:
    """The concept of each pool position as an index into ``concepts`` (−1 where it is none of them).

    A sample with a class (target ≥ 0, also a retrieval pair that carries one, as FiF's FSCOCO sketches
    do) belongs to ``dataset+++classname``; a retrieval dataset taken whole (``dataset+++*``) owns all of
    its pairs, with or without a class.
    """

    index = {c: i for i, c in enumerate(concepts)}
    out = np.full(len(pool), -1, dtype=np.int64)
    for s, (split, idx) in enumerate(pool.segments):
        spec, targets = split.spec, split.targets[idx]
        whole = index.get(concept_id(spec.name, ALL_PAIRS), -1)  # a retrieval set taken whole
        by_class = [index.get(concept_id(spec.name, c), whole) for c in spec.classnames]
        out[pool.offsets[s] : pool.offsets[s + 1]] = [
            by_class[t] if 0 <= t < len(by_class) else whole for t in targets.tolist()
        ]
    return out


def pool_captions(pool: Pool, n: int, rng: np.random.Generator) -> list[str]:
    """``n`` captions of distinct samples of ``pool`` (all of them when it is smaller), drawn with ``rng``:
    uniform samples without replacement, one of each sample's captions at random."""
    positions = np.sort(rng.choice(len(pool), size=min(n, len(pool)), replace=False))
    texts: list[str] = [""] * len(positions)
    for split, local, where in pool.locate(positions):
        for w, i in zip(where.tolist(), local.tolist()):
            caps = split.captions(i)
            texts[w] = caps[int(rng.integers(len(caps)))] if len(caps) > 1 else caps[0]
    return texts
