"""A :class:`fif.methods.TaskData` held in memory, for the method tests (on the test path: ``pythonpath`` in
pyproject.toml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from fif.data.batch import Batch


@dataclass
class MemoryTaskData:
    """``batches(b)``: the rows of ``rows`` in order, in batches of b (the same every call);
    ``reference_texts(n)``: ``texts(n)``, or no captions (a run without a pretraining pool)."""

    rows: Batch | None = None
    texts: Callable[[int], list[str]] | None = None

    def batches(self, batch_size: int) -> Iterator[Batch]:
        rows = self.rows
        if rows is None:
            return
        for i in range(0, len(rows), batch_size):
            labels = None if rows.labels is None else rows.labels[i : i + batch_size]
            yield Batch(rows.images[i : i + batch_size], rows.tokens[i : i + batch_size],
                        rows.source[i : i + batch_size], labels)  # fmt: skip

    def reference_texts(self, n: int) -> list[str]:
        return [] if self.texts is None else self.texts(n)
