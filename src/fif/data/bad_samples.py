"""Bad samples: an image that cannot be read is skipped, named and counted; never silently.

FiF's reference pipeline warns and continues on an undecodable image. fif does the same without giving
up the exact per-batch counts or determinism: a bad sample is replaced by the next readable sample of the
same split with the same target (class), image and captions together. A batch keeps its size, a class
its balance, a retrieval pair its own caption. The replacement depends only on the files, so every
process (DataLoader workers, a resumed run) makes the same one and draws the same augmentations.

:class:`GuardedSplit` wraps a file-backed split (the benchmark wraps every split it loads; the pool is
wrapped too). :class:`BadSampleLog` is what a run keeps: the files per source, and the cap
(``data.max_bad_samples``) past which the run stops and lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from fif.data.specs import BadSampleError, InMemorySplit, SplitData


class TooManyBadSamplesError(ValueError):
    """More unreadable samples than ``data.max_bad_samples``; the message lists them."""


class GuardedSplit:
    """A split whose unreadable samples are replaced by the next readable one of the same target.

    Reads go through the wrapped split; any attribute it has (``paths``, ``index_file``, ...) is
    reachable on the wrapper too.

    Attributes:
        inner: the wrapped split.
    """

    def __init__(self, inner: SplitData):
        self.inner = inner
        self._substitute: dict[int, int] = {}  # bad index -> the readable sample standing in for it
        self._bad: dict[int, str] = {}  # bad index -> file named in reports
        self._fresh: list[str] = []  # bad files not yet handed to drain()

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("inner", "_substitute", "_bad", "_fresh"):
            raise AttributeError(name)  # during unpickling, before __dict__ is filled
        return getattr(self.inner, name)

    @property
    def spec(self):
        return self.inner.spec

    @property
    def split(self) -> str:
        return self.inner.split

    @property
    def targets(self) -> np.ndarray:
        return self.inner.targets

    def __len__(self) -> int:
        return len(self.inner)

    def captions(self, index: int) -> Sequence[str]:
        """The captions of sample ``index``, or of the sample that replaced it (read its image first)."""
        return self.inner.captions(self._substitute.get(index, index))

    def images(self, indices: np.ndarray, size: int, train: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """The wrapped split's images, with each unreadable sample replaced (see the module docstring).

        Raises:
            BadSampleError: no readable sample is left to stand in for a bad one.
        """
        idx = np.asarray(indices, dtype=np.int64)
        if not (self._substitute and any(int(i) in self._substitute for i in idx)):
            state = _rng_state(generator, train)
            try:
                return self.inner.images(idx, size, train, generator)
            except BadSampleError as e:
                self._mark(e)
                _set_rng_state(generator, state)  # a failed decode draws nothing: redo the batch's draws
        out = torch.empty((len(idx), 3, size, size), dtype=torch.float32)
        for k, i in enumerate(idx.tolist()):
            out[k] = self._readable(i, size, train, generator)[0]
        return out

    def drain(self) -> list[str]:
        """The bad files found since the last call (each once per process)."""
        fresh, self._fresh = self._fresh, []
        return fresh

    def report(self, files: Sequence[str]) -> None:
        """Bad files a copy of this split met in another process (a DataLoader worker): the next
        :meth:`drain` of this one hands them on."""
        self._fresh.extend(f for f in files if f not in self._fresh)

    def _mark(self, e: BadSampleError) -> None:
        if e.index >= 0 and e.index not in self._bad:
            self._bad[e.index] = e.where or str(e)
            self._fresh.append(self._bad[e.index])

    def _readable(self, index: int, size: int, train: bool, generator: torch.Generator | None) -> torch.Tensor:
        j = self._substitute.get(index, index)
        if j not in self._bad:
            try:
                return self.inner.images(np.array([j]), size, train, generator)
            except BadSampleError as e:
                self._mark(e)
                if e.index < 0:
                    raise
        for j in self._candidates(index):
            if j in self._bad:
                continue
            try:
                image = self.inner.images(np.array([j]), size, train, generator)
            except BadSampleError as e:
                self._mark(e)
                continue
            self._substitute[index] = j
            return image
        spec = self.inner.spec
        raise BadSampleError(f"{spec.name}/{self.inner.split}: sample {index} ({self._bad.get(index)}) is unreadable and "
                             f"so is every other sample with its target; fix or re-download the dataset",
                             index=index, where=self._bad.get(index, ""))

    def _candidates(self, index: int) -> np.ndarray:
        """Samples with the same target as ``index``, starting after it and wrapping around."""
        targets = self.inner.targets
        same = np.flatnonzero(targets == targets[index]) if len(targets) else np.arange(len(self.inner))
        cut = int(np.searchsorted(same, index, side="right"))
        order = np.concatenate([same[cut:], same[:cut]])
        return order[order != index]


def _rng_state(generator: torch.Generator | None, train: bool):
    if generator is not None:
        return generator.get_state()
    return torch.get_rng_state() if train else None  # train transforms without a generator draw from torch's


def _set_rng_state(generator: torch.Generator | None, state) -> None:
    if state is None:
        return
    if generator is not None:
        generator.set_state(state)
    else:
        torch.set_rng_state(state)


def guard(split: SplitData) -> SplitData:
    """``split`` wrapped in a :class:`GuardedSplit`; in-memory splits (nothing to decode) and splits
    already guarded are returned as they are."""
    if isinstance(split, (GuardedSplit, InMemorySplit)):
        return split
    return GuardedSplit(split)


def drain(split: SplitData) -> list[str]:
    """The bad files a (possibly guarded) split found since the last call."""
    return split.drain() if isinstance(split, GuardedSplit) else []


def report(split: SplitData, files: Sequence[str]) -> None:
    """Hand ``files``, which a worker's copy of ``split`` found (its :func:`drain`), to ``split`` itself."""
    if files and isinstance(split, GuardedSplit):
        split.report(files)


@dataclass
class BadSampleLog:
    """A run's unreadable samples: file names per source (dataset or pool), and the cap.

    Attributes:
        cap: ``data.max_bad_samples``; more than this many in all stops the run.
        files: source -> bad files, in the order they were found.
    """

    cap: int
    files: dict[str, list[str]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.files.values())

    def add(self, source: str, where: str) -> bool:
        """Record one bad file; False when it was already known."""
        known = self.files.setdefault(source, [])
        if where in known:
            return False
        known.append(where)
        return True

    def counts(self) -> dict[str, int]:
        return {source: len(files) for source, files in self.files.items()}

    def check(self) -> None:
        """Raise when more than ``cap`` samples are bad.

        Raises:
            TooManyBadSamplesError: listing every bad file by source, and the fixes.
        """
        if self.total <= self.cap:
            return
        listed = "\n".join(f"  {source}: {', '.join(files)}" for source, files in self.files.items())
        raise TooManyBadSamplesError(
            f"{self.total} unreadable image(s), more than data.max_bad_samples={self.cap}:\n{listed}\n"
            f"Re-download or remove these files (fif data check decodes a sample of every dataset), or raise "
            f"data.max_bad_samples; the run can continue with fif run --resume"
        )
