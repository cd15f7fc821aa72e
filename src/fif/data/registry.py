"""Benchmarks by name: a benchmark is a set of DatasetSpecs plus a loader for their splits.

Register a benchmark with :func:`register_benchmark` next to its builder. ``get_benchmark`` gives the
valid names when one is unknown.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable, Iterable

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
    """

    name: str
    datasets: dict[str, DatasetSpec]
    loader: Callable[[DatasetSpec, str], SplitData]
    pretraining_pool: str | None = None
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
        """Load (once, then cached) split ``split`` of dataset ``name``."""
        key = (name, split)
        if key not in self._cache:
            self._cache[key] = self.loader(self.spec(name), split)
        return self._cache[key]

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


def register_benchmark(name: str) -> Callable[[BenchmarkBuilder], BenchmarkBuilder]:
    """Decorator: register a benchmark builder under ``name`` (fails at import on a duplicate)."""

    def wrap(builder: BenchmarkBuilder) -> BenchmarkBuilder:
        if name in _BENCHMARKS:
            raise ValueError(f"benchmark {name!r} is registered twice; rename one of them")
        _BENCHMARKS[name] = builder
        return builder

    return wrap


def benchmark_names() -> list[str]:
    _import_builtin()
    return sorted(_BENCHMARKS)


def get_benchmark(name: str, **options) -> Benchmark:
    """Build benchmark ``name`` with builder-specific ``options``.

    ``name`` may also be the path of a YAML file describing a user's own datasets
    (see :mod:`fif.data.user_benchmark`); its options are ``root``, ``datasets`` and ``index_dir``.

    Raises:
        KeyError: for an unknown name, listing the registered ones.
    """
    _import_builtin()
    if name not in _BENCHMARKS:
        from fif.data.user_benchmark import is_benchmark_path, load_benchmark_yaml

        if is_benchmark_path(name):
            return load_benchmark_yaml(name, **options)
        raise KeyError(unknown_name_message("benchmark", name, _BENCHMARKS) + " (or the path of a benchmark YAML file)")
    return _BENCHMARKS[name](**options)


def benchmark_options(options: dict, root: str | None = None) -> dict:
    """A benchmark's builder options: ``data.options`` plus ``root=data.root`` when that is set (an
    explicit ``data.options.root`` wins)."""
    out = dict(options)
    if root is not None and "root" not in out:
        out["root"] = root
    return out


def unknown_name_message(what: str, name: str, valid: Iterable[str], where: str = "") -> str:
    """``unknown dataset 'x' in benchmark 'mini'; did you mean 'y'? Valid: a, b, c``."""
    valid = list(valid)
    close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.5)
    msg = f"unknown {what} {name!r}" + (f" in {where}" if where else "")
    if close:
        msg += f"; did you mean {' or '.join(repr(c) for c in close)}?"
    shown = ", ".join(valid[:40]) + (", ..." if len(valid) > 40 else "")
    return msg + f" Valid: {shown}"


def _import_builtin() -> None:
    # Importing the modules runs their @register_benchmark lines.
    import fif.data.fif_benchmark  # noqa: F401
    import fif.data.mini  # noqa: F401
