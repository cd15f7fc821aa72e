"""DataLoader workers that start once and serve a whole run: the training feed across tasks and the
evaluation images across evaluations.

A :class:`PersistentLoader` wraps a map-style dataset whose items are named by keys (``(task, step)`` for
training batches, ``(split, sample indices)`` for evaluation images). Each pass asks for an explicit list
of keys, in order (:meth:`PersistentLoader.iterate`); the workers, started at the first pass, prefetch
``prefetch_factor`` items each and keep running between passes (torch's ``persistent_workers``). An item
is ``dataset[key]`` wherever it is computed, and every random draw in fif's items derives from its key, so
what a pass yields does not depend on the number of workers (0 = computed in this process, on demand).
An error raised while a worker computes an item is raised in this process as it would be without workers:
the same type and one-line message, not torch's "Caught ... in DataLoader worker process 0. Original
Traceback ..." (:class:`WorkerSafe`).

The workers copy the dataset when they start (fork), so it must already hold everything any later pass
asks for: :class:`StreamBatches` holds every remaining task's batches, :class:`SplitImages` every split an
evaluation reads.
"""

from __future__ import annotations

import atexit
import signal
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fif.data.bad_samples import drain, report
from fif.data.specs import SplitData


class KeyPlan(torch.utils.data.Sampler):
    """The keys the next pass of a :class:`PersistentLoader` asks for (replaced before each pass)."""

    def __init__(self) -> None:
        self.keys: list[Any] = []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class PersistentLoader:
    """Items of a dataset by key, computed ahead in worker processes that serve every pass until the next
    :meth:`start` or :meth:`close`.

    Args:
        num_workers: worker processes (0: every item is computed in this process when it is asked for).
        dataset: a map-style dataset (``dataset[key]``) to :meth:`start` with now, if any.
        prefetch_factor: items each worker computes ahead.
        pin_memory: return items in page-locked memory (for asynchronous copies to a CUDA device).
    """

    def __init__(self, num_workers: int, dataset: Any = None, prefetch_factor: int = 2, pin_memory: bool = False):
        self.num_workers, self.prefetch_factor, self.pin_memory = num_workers, prefetch_factor, pin_memory
        self.dataset: Any = None
        self._plan = KeyPlan()
        self._loader: torch.utils.data.DataLoader | None = None
        if dataset is not None:
            self.start(dataset)

    def start(self, dataset: Any) -> None:
        """Serve ``dataset`` from now on (its workers start at the next pass and copy it then)."""
        self.close()
        self.dataset = dataset
        if self.num_workers > 0:
            self._loader = torch.utils.data.DataLoader(
                WorkerSafe(dataset), batch_size=None, sampler=self._plan, num_workers=self.num_workers, persistent_workers=True,
                prefetch_factor=self.prefetch_factor, pin_memory=self.pin_memory,
                # The workers' base seed comes from this generator, not from torch's global RNG, which a run's
                # training draws from: with the default, starting workers would change the run's random stream.
                generator=torch.Generator().manual_seed(0),
                worker_init_fn=_worker_signals,
            )

    def iterate(self, keys: Iterable[Any]) -> Iterator[Any]:
        """``dataset[key]`` for each key, in order. A new pass may start before the last one is used up:
        the items still in flight are dropped (torch drains them when the next pass starts).

        Raises:
            RuntimeError: no dataset was started.
        """
        if self.dataset is None:
            raise RuntimeError("PersistentLoader.iterate before start(dataset)")
        keys = list(keys)
        if self._loader is None:
            return (self.dataset[k] for k in keys)
        self._plan.keys = keys
        _LIVE.add(self)
        return loader_items(iter(self._loader))  # persistent_workers: the same processes, a new pass over the plan

    def close(self) -> None:
        """Stop the worker processes and forget the dataset (idempotent)."""
        if self._loader is not None:
            # DataLoader has no public close(); its persistent iterator shuts its workers down.
            iterator = getattr(self._loader, "_iterator", None)
            if iterator is not None:
                iterator._shutdown_workers()
                self._loader._iterator = None
        self._loader, self.dataset = None, None


def _worker_signals(worker_id: int) -> None:
    """Workers ignore SIGINT and SIGTERM: they outlive many passes, and a signal sent to the whole process
    group (Ctrl-C; the end of a cluster job) must reach only the main process, which stops the run at a
    step boundary, writes its checkpoint and then shuts the workers down. A worker that died of the signal
    would make torch raise in the main process mid-step, before the checkpoint; one inheriting the run's
    stop handler would raise inside the worker. Without their parent, workers exit on their own (torch's
    watchdog, within seconds)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


_LIVE: weakref.WeakSet = weakref.WeakSet()  # loaders whose workers may be running


@atexit.register
def _close_live_loaders() -> None:
    """Shut down workers still running at exit (a loader nobody closed). Registered after multiprocessing's
    own exit hook, so it runs first: that hook would SIGTERM the workers (ignored) and wait for them."""
    for loader in list(_LIVE):
        loader.close()


class CaughtInWorker:
    """An exception a worker caught: its type and message, which travel to the main process as data."""

    def __init__(self, error: Exception):
        self.type = type(error)
        self.message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)

    def error(self) -> Exception:
        """The exception to raise again: the same type and message, or the nearest base class that takes a
        message (a type whose constructor needs more arguments)."""
        for cls in self.type.__mro__:
            try:
                return cls(self.message)
            except Exception:  # noqa: BLE001, S112 - a constructor that wants other arguments: try its base
                continue
        return RuntimeError(self.message)


class WorkerSafe(torch.utils.data.Dataset):
    """Wraps a map-style dataset so that an exception while computing an item in a worker is returned as a
    :class:`CaughtInWorker`, not raised there (torch would fold the worker's traceback into the message)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __getitem__(self, key: Any) -> Any:
        try:
            return self.dataset[key]
        except Exception as e:  # noqa: BLE001 - carried to the main process and raised there (loader_items)
            return CaughtInWorker(e)


def loader_items(items: Iterable[Any]) -> Iterator[Any]:
    """The items of a DataLoader over a :class:`WorkerSafe` dataset; a worker's error is raised here.

    Raises:
        Exception: whatever computing an item raised in the worker, with its own one-line message.
    """
    for item in items:
        if isinstance(item, CaughtInWorker):
            raise item.error() from None
        yield item


class StreamBatches(torch.utils.data.Dataset):
    """Item ``(task, step)`` is ``per_task[task][step]``: every remaining task's training batches in one
    dataset, so one set of workers serves the whole stream."""

    def __init__(self, per_task: Mapping[int, Any]):
        self.per_task = dict(per_task)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        task, step = key
        return self.per_task[task][step]


class SplitImages(torch.utils.data.Dataset):
    """Item ``(split, indices)`` is the test-time images of those samples of ``splits[split]`` (float
    (len(indices), 3, size, size) in [0, 1], as ``SplitData.images(indices, size, train=False)`` gives them)
    and the unreadable files that read met (each replaced; :mod:`fif.data.bad_samples`): a worker's copy of
    the split learns of them, so they travel back with the images (:func:`delivered` hands them on)."""

    def __init__(self, splits: Sequence[SplitData], image_size: int):
        self.splits, self.image_size = list(splits), image_size

    def __getitem__(self, key: tuple[int, np.ndarray]) -> tuple[torch.Tensor, tuple[str, ...]]:
        split, indices = key
        images = self.splits[split].images(indices, self.image_size, train=False)
        return images, tuple(drain(self.splits[split]))


def delivered(items: Iterable[tuple[torch.Tensor, Sequence[str]]], splits: Sequence[SplitData]) -> Iterator[torch.Tensor]:
    """The images of :class:`SplitImages` items, each item's unreadable files reported to ``splits[i]`` (the
    split the i-th item was read from), in this process, where a run collects them."""
    for (images, files), split in zip(items, splits):
        report(split, files)
        yield images
