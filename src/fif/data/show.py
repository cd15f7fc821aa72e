"""What ``fif data show`` and ``fif data materialize`` do, as library functions (no printing).

``describe`` returns the table of a benchmark's datasets (``describe_rows`` the records),
``registered_datasets`` lists every dataset a benchmark registers without reading data, ``sample_grid``
writes a PNG of samples with their captions, ``materialize`` writes every split to FiF's on-disk layout (which then loads back
through :mod:`fif.data.sources.fif_layout`).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from fif.data.fif_benchmark import catalogue_rows
from fif.data.registry import Benchmark, MissingSplitError, get_benchmark
from fif.data.sources.fif_layout import write_split
from fif.data.specs import DatasetSpec

_ROLE_ORDER = {"pretraining": 0, "eval_only": 1, "adaptation": 2}


def _splits(spec: DatasetSpec) -> tuple[str, ...]:
    return ("train",) if spec.role == "pretraining" else ("train", "test")


def _split_sizes(benchmark: Benchmark, spec: DatasetSpec) -> dict[str, int]:
    """Sizes of the splits a dataset has; a split it lacks (FiF's eval-only sets have no train) is left out."""
    sizes = {}
    for split in _splits(spec):
        try:
            sizes[split] = len(benchmark.load(spec.name, split))
        except MissingSplitError:
            continue
    return sizes


def _load_any(benchmark: Benchmark, spec: DatasetSpec, split: str):
    """``split`` of the dataset, or the first split it has (pools have only train; FiF's eval-only sets no train)."""
    order = [split] + [s for s in _splits(spec) if s != split] if split in _splits(spec) else list(_splits(spec))
    for name in order:
        try:
            return benchmark.load(spec.name, name)
        except MissingSplitError:
            continue
    raise MissingSplitError(f"dataset {spec.name!r} has none of the splits {', '.join(order)}")


def _select(benchmark: Benchmark, names: Iterable[str] | None) -> list[DatasetSpec]:
    specs = [benchmark.spec(n) for n in names] if names else list(benchmark.datasets.values())
    return sorted(specs, key=lambda s: _ROLE_ORDER.get(s.role, 3))


def describe_rows(benchmark: Benchmark, datasets: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One record per dataset: name, role, kind, classes, split sizes, release year, primer, templates
    (loading the splits to count them; for the mini world, a few seconds).

    Raises:
        KeyError: an unknown dataset name (with the valid ones).
    """
    return [{
        "name": spec.name, "role": spec.role, "kind": spec.kind, "classes": spec.num_classes,
        "sizes": _split_sizes(benchmark, spec), "release_year": spec.release_year, "primer": spec.primer,
        "templates": list(spec.templates), "location": spec.location, "description": spec.description,
    } for spec in _select(benchmark, datasets)]


def describe(benchmark: Benchmark, datasets: Sequence[str] | None = None) -> str:
    """A text table of the benchmark's datasets: role, kind, classes, split sizes, year, primer.

    Loading the splits to count them generates them (for the mini world, a few seconds).

    Args:
        benchmark: the benchmark.
        datasets: restrict to these names (default: all).

    Returns:
        The table, one dataset per line, with a header.

    Raises:
        KeyError: an unknown dataset name (with the valid ones).
    """
    rows = [("dataset", "role", "kind", "classes", "train", "test", "year", "primer")]
    for r in describe_rows(benchmark, datasets):
        sizes = {s: str(n) for s, n in r["sizes"].items()}
        rows.append((
            r["name"], r["role"], r["kind"], str(r["classes"]) if r["kind"] == "classification" else "-",
            sizes.get("train", "-"), sizes.get("test", "-"), str(r["release_year"] or "-"),
            r["primer"] if r["role"] != "pretraining" and r["classes"] else "-",
        ))
    text = _table(rows)
    if benchmark.pretraining_pool:
        text += f"\npretraining pool: {benchmark.pretraining_pool}"
    return text


def registered_datasets(name: str, options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every dataset benchmark ``name`` registers, whether or not it is on disk, without reading data:
    for ``fif`` the catalogue (folder, role, kind, primer, info-file split names, release year; with a
    ``root`` option, whether each is present); for others their specs.

    Raises:
        KeyError / ValueError: an unknown benchmark, dataset or option.
    """
    if name == "fif":
        return catalogue_rows(**(options or {}))
    bench = get_benchmark(name, **(options or {}))
    return [{
        "name": s.name, "role": s.role, "kind": s.kind, "classes": s.num_classes, "primer": s.primer,
        "templates": list(s.templates), "release_year": s.release_year, "location": s.location,
        "description": s.description,
    } for s in _select(bench, None)]


def registered_table(rows: list[dict[str, Any]]) -> str:
    """:func:`registered_datasets` as a text table."""
    has_disk = any("on_disk" in r for r in rows)
    head = ("dataset", "role", "kind", "splits", "year", "primer") + (("on disk",) if has_disk else ())
    body = [(
        r["name"], r["role"], r["kind"], " / ".join(r.get("splits", {}).values()) or "-",
        str(r.get("release_year") or "-"), r["primer"],
    ) + ((("yes" if r.get("on_disk") else "no"),) if has_disk else ()) for r in rows]
    return _table([head, *body])


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def sample_grid(
    benchmark: Benchmark,
    path: str | Path,
    per_dataset: int = 6,
    split: str = "train",
    datasets: Sequence[str] | None = None,
    seed: int = 0,
) -> Path:
    """Write a PNG grid: one row per dataset, ``per_dataset`` random samples with their first caption.

    Args:
        benchmark: the benchmark.
        path: output PNG path (parent folders are created).
        per_dataset: samples per row.
        split: split to draw from (pools only have ``train``; they always use it).
        datasets: restrict to these names (default: all).
        seed: which samples are shown.

    Returns:
        The written path.
    """
    import matplotlib  # heavy: only the commands that draw pay for it

    matplotlib.use("Agg")  # no display needed; the CLI only writes files
    import matplotlib.pyplot as plt  # heavy: only the commands that draw pay for it

    specs = _select(benchmark, datasets)
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(specs), per_dataset, figsize=(per_dataset * 1.9, len(specs) * 2.3), squeeze=False)
    for row, spec in zip(axes, specs):
        data = _load_any(benchmark, spec, split)
        picks = rng.choice(len(data), size=min(per_dataset, len(data)), replace=False)
        images = data.images(picks, int(getattr(data, "pixels", np.zeros((1, 3, 64, 64))).shape[-1]))
        for k, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if k >= len(picks):
                ax.axis("off")
                continue
            ax.imshow(images[k].permute(1, 2, 0).numpy(), interpolation="nearest")
            caption = data.captions(int(picks[k]))[0]
            ax.set_xlabel("\n".join(textwrap.wrap(caption, 26)[:3]), fontsize=6)
            if k == 0:
                ax.set_ylabel(f"{spec.name}\n({spec.role})", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def materialize(
    benchmark: Benchmark,
    out_dir: str | Path,
    datasets: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
) -> list[Path]:
    """Write the benchmark's splits to FiF's preprocessed layout under ``out_dir``.

    Each dataset ``NAME`` becomes ``out_dir/NAME/`` (PNG images), ``out_dir/NAME_classnames.json`` and
    ``out_dir/NAME_<split>.json``.

    Args:
        benchmark: the benchmark.
        out_dir: destination folder.
        datasets: restrict to these names (default: all).
        splits: restrict to these splits (default: every split a dataset has).

    Returns:
        The split JSON files written.
    """

    out = Path(out_dir)
    written = []
    for spec in _select(benchmark, datasets):
        for split in _splits(spec):
            if splits and split not in splits:
                continue
            written.append(write_split(benchmark.load(spec.name, split), out / spec.name))
    return written
