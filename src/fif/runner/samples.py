"""A run's unreadable samples (:mod:`fif.data.bad_samples`): gathered, logged, counted, capped.

Each unreadable image is replaced where it is read. The run learns of it from the training batch that
met it (batches may be built in DataLoader workers) or, for what this process read itself (evaluation,
task hooks), from the splits after each evaluation. Each new file is warned about once, logged as a
``bad_samples`` event (``summary.json`` counts them per source), kept in the run state (checkpointed),
and more than ``data.max_bad_samples`` stop the run with the list of files.

In a data-parallel run each rank decodes only its rows and its share of each evaluation, so each meets
its own unreadable files: during a task they are recorded per rank (the cap is not checked, so that no
rank stops alone), and after every evaluation (:func:`collect`, a collective) every rank takes the union
of every rank's files, rank 0 logs the new ones, and all check the cap together.
"""

from __future__ import annotations

import logging
from typing import Iterable, Iterator, Sequence

from fif.data.bad_samples import drain
from fif.data.batch import Batch
from fif.runner.spec import RunSpec
from fif.runner.state import RunState

log = logging.getLogger(__name__)


def watch(spec: RunSpec, state: RunState, batches: Iterable[Batch], task: int) -> Iterator[Batch]:
    """Pass the training batches through, recording the bad samples each one met (a Python check of a
    tuple per step: no device work, no sync).

    Raises:
        TooManyBadSamplesError: past ``data.max_bad_samples``.
    """
    alone = spec.ranks.world_size == 1  # else the cap is checked by collect, on every rank at once
    for batch in batches:
        if batch.bad:
            record(spec, state, task, batch.bad, check=alone)
        yield batch


def collect(spec: RunSpec, state: RunState, task: int) -> None:
    """Record what this process's own reads met (evaluation, task hooks, the pool) since the last call.

    Raises:
        TooManyBadSamplesError: past ``data.max_bad_samples``.
    """
    found = spec.benchmark.bad_samples()
    if spec.pretraining_pool is not None:
        found += [(split.spec.name, f) for split, _ in spec.pretraining_pool.segments for f in drain(split)]
    if spec.ranks.world_size > 1:  # every rank's files, in rank order, on every rank
        found = [(source, f) for source, files in state.bad_samples.files.items() for f in files] + found
        found = [pair for each in spec.ranks.gather_objects(found) for pair in each]
    record(spec, state, task, found)


def record(spec: RunSpec, state: RunState, task: int, found: Sequence[tuple[str, str]], check: bool = True) -> None:
    """Warn about, log and count the files of ``found`` not seen before; stop past the cap.

    Args:
        spec: the run (its event channel).
        state: the run's state (its ``bad_samples``).
        task: the task during which they were found (-1: the zero-shot evaluation).
        found: (source, file) pairs.
        check: stop past the cap (False: a data-parallel rank mid-task; :func:`collect` checks).

    Raises:
        TooManyBadSamplesError: past ``data.max_bad_samples``.
    """
    seen = state.bad_samples
    new: dict[str, list[str]] = {}
    for source, where in found:
        if seen.add(source, where):
            new.setdefault(source, []).append(where)
            log.warning("skipped an unreadable image of %s: %s (replaced by the next readable sample, of the same "
                        "class where it has one)", source, where)
    if new:
        spec.emit({"event": "bad_samples", "task": task, "files": new, "total": seen.total})
    if check:
        seen.check()
