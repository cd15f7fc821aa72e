"""DataLoader workers whose errors reach the user as the same one-line message as in the main process.

PyTorch re-raises a worker's exception in the main process with the worker's whole traceback folded
into the message ("Caught SourceError in DataLoader worker process 0. Original Traceback ..."), so a
missing image that reads as one line without workers becomes forty lines with them. Here a worker
catches its exception and returns it as data (its type and message); :func:`loader_items` raises it
again in the main process, unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch


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
    """Wraps a map-style dataset so that an exception while loading an item is returned, not raised."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except Exception as e:  # noqa: BLE001 - carried to the main process and raised there (loader_items)
            return CaughtInWorker(e)


def loader_items(loader: Iterable[Any]) -> Iterator[Any]:
    """The items of a DataLoader over a :class:`WorkerSafe` dataset; a worker's error is raised here.

    Raises:
        Exception: whatever loading an item raised in the worker, with its own one-line message.
    """
    for item in loader:
        if isinstance(item, CaughtInWorker):
            raise item.error() from None
        yield item
