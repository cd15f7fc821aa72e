"""Benchmarks by name: a benchmark is a set of DatasetSpecs plus a loader for their splits.

Register a benchmark with :func:`register_benchmark` next to its builder. ``get_benchmark`` gives the
valid names when one is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from fif.core.names import unknown_name_message
from fif.data.bad_samples import drain, guard
from fif.data.specs import DatasetSpec, SplitData


class MissingSplitError(ValueError):
    """A dataset has no such split (e.g. the train split of an evaluation-only dataset)."""


@dataclass
class Benchmark:
    """A named collection of datasets and a way to load their splits.

    Attributes:
        name: benchmark name (``mini``, ``fif``, or a user's).
        datasets: every dataset by name, in a stable order.
        loader: ``loader(spec, split) -> SplitData``.
        pretraining_pool: name of the dataset (role ``pretraining``) used for pretraining replay, if any.
        left_out: datasets the benchmark knows but did not load, and why (e.g. FiF datasets not
            downloaded): a stream file naming them is filtered to the rest.
    """

    name: str
    datasets: dict[str, DatasetSpec]
    loader: Callable[[DatasetSpec, str], SplitData]
    pretraining_pool: str | None = None
    left_out: dict[str, str] = field(default_factory=dict)
    _cache: dict[tuple[str, str], SplitData] = field(default_factory=dict, repr=False)

    def spec(self, name: str) -> DatasetSpec:
        """The spec of dataset ``name``.

        Raises:
            KeyError: naming the closest valid dataset names.
        """
        if name not in self.datasets:
            raise KeyError(unknown_name_message("dataset", name, self.datasets, where=f"benchmark {self.name!r}"))
        return self.datasets[name]

    def load(self, name: str, split: str) -> SplitData:
        """Load (once, then cached) split ``split`` of dataset ``name``.

        File-backed splits come guarded: an unreadable image is replaced by the next readable sample of
        its class and reported by :meth:`bad_samples` (see :mod:`fif.data.bad_samples`).
        """
        key = (name, split)
        if key not in self._cache:
            self._cache[key] = guard(self.loader(self.spec(name), split))
        return self._cache[key]

    def bad_samples(self) -> list[tuple[str, str]]:
        """(dataset, file) of every unreadable sample this process found since the last call."""
        return [(name, where) for (name, _), split in self._cache.items() for where in drain(split)]

    def by_role(self, role: str) -> list[DatasetSpec]:
        return [s for s in self.datasets.values() if s.role == role]

    @property
    def adaptation(self) -> list[DatasetSpec]:
        return self.by_role("adaptation")

    @property
    def eval_only(self) -> list[DatasetSpec]:
        return self.by_role("eval_only")


BenchmarkBuilder = Callable[..., Benchmark]
_BENCHMARKS: dict[str, BenchmarkBuilder] = {}
# Benchmarks named by a path (a user's YAML file): (is such a path, build from it); set by fif.data.user_benchmark.
_PATH_LOADERS: list[tuple[Callable[[str], bool], BenchmarkBuilder]] = []


def register_path_loader(matches: Callable[[str], bool], load: BenchmarkBuilder) -> None:
    """Let :func:`get_benchmark` build a benchmark from a name that ``matches`` (e.g. a YAML file's path)."""
    _PATH_LOADERS.append((matches, load))


def register_benchmark(name: str) -> Callable[[BenchmarkBuilder], BenchmarkBuilder]:
    """Decorator: register a benchmark builder under ``name`` (fails at import on a duplicate)."""

    def wrap(builder: BenchmarkBuilder) -> BenchmarkBuilder:
        if name in _BENCHMARKS:
            raise ValueError(f"benchmark {name!r} is registered twice; rename one of them")
        _BENCHMARKS[name] = builder
        return builder

    return wrap


def benchmark_names() -> list[str]:
    return sorted(_BENCHMARKS)


def get_benchmark(name: str, **options) -> Benchmark:
    """Build benchmark ``name`` with builder-specific ``options``.

    ``name`` may also be the path of a YAML file describing a user's own datasets
    (see :mod:`fif.data.user_benchmark`); its options are ``root``, ``datasets`` and ``index_dir``.

    Raises:
        KeyError: for an unknown name, listing the registered ones.
    """
    if name not in _BENCHMARKS:
        for matches, load in _PATH_LOADERS:
            if matches(name):
                return load(name, **options)
        raise KeyError(unknown_name_message("benchmark", name, _BENCHMARKS) + " (or the path of a benchmark YAML file)")
    return _BENCHMARKS[name](**options)


def benchmark_options(options: dict, root: str | None = None) -> dict:
    """A benchmark's builder options: ``data.options`` plus ``root=data.root`` when that is set (an
    explicit ``data.options.root`` wins)."""
    out = dict(options)
    if root is not None and "root" not in out:
        out["root"] = root
    return out
