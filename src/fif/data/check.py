"""Preflight of a run's data (``fif data check``): per dataset the files found or missing, split sizes,
classes, how many entries carry a caption of their own, a decode test of a sample of images, and the
primer; the pretraining pool and a stream file too. Library functions only: the CLI prints.

A run does the fast part of this at setup (building the benchmark locates every file, the pool is
indexed and the stream file fitted before the model is built); the check adds what needs reading:
every split, and images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fif.core.seeding import rng_for
from fif.data.pool import load_pool
from fif.data.registry import Benchmark
from fif.data.specs import BadSampleError, DatasetSpec, SplitData
from fif.data.stream_file import fit_stream, read_stream

DECODE_SIZE = 32  # decoding is the test; a small output keeps the resize cheap
STATUSES = ("ok", "note", "warning", "error")
ABSENT = "-"  # the role shown for a dataset that is not on disk (nothing of it was read)


@dataclass
class SplitCheck:
    """One split of one dataset: the file read, its size, caption coverage and the decode test."""

    split: str
    file: str = ""
    size: int = 0
    own_captions: int | None = None  # entries with a caption of their own (None: the source does not say)
    decoded: int = 0
    unreadable: list[str] = field(default_factory=list)


@dataclass
class DatasetCheck:
    """What ``fif data check`` reports for one dataset (or the pool)."""

    name: str
    role: str
    kind: str = ""
    primer: str = ""
    classes: int = 0
    status: str = "ok"
    splits: list[SplitCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what a run would fail on
    warnings: list[str] = field(default_factory=list)  # what a run would skip or report
    notes: list[str] = field(default_factory=list)

    def settle(self) -> "DatasetCheck":
        self.status = "error" if self.problems else "warning" if self.warnings else "note" if self.notes else "ok"
        return self


@dataclass
class DataCheck:
    """The whole preflight: datasets, the pool, the stream file, and problems outside any dataset."""

    datasets: list[DatasetCheck] = field(default_factory=list)
    pool: DatasetCheck | None = None
    stream: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """False when a run would fail on anything reported."""
        checks = [*self.datasets, *([self.pool] if self.pool else [])]
        return not self.problems and all(c.status != "error" for c in checks)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


def check_dataset(benchmark: Benchmark, spec: DatasetSpec, decode: int, seed: int, max_bad: int) -> DatasetCheck:
    """Load every split the dataset's role needs and decode ``decode`` sampled images of each."""
    out = DatasetCheck(spec.name, spec.role, spec.kind, spec.primer, spec.num_classes)
    needed = ("train", "test") if spec.role == "adaptation" else ("train",) if spec.role == "pretraining" else ("test",)
    for split in needed:
        try:
            data = benchmark.load(spec.name, split)
        except (OSError, ValueError, KeyError) as e:  # the source's own message names the file
            out.problems.append(f"{split}: {e.args[0] if isinstance(e, KeyError) and e.args else e}")
            continue
        out.splits.append(check_split(data, split, decode, seed, out, max_bad))
        if split == "train" and spec.num_classes:
            empty = spec.num_classes - len(set(np.unique(data.targets).tolist()) - {-1})
            if empty:
                out.notes.append(f"{empty} of {spec.num_classes} classes have no training image (left out of streams)")
    return out.settle()


def check_split(data: SplitData, split: str, decode: int, seed: int, out: DatasetCheck, max_bad: int) -> SplitCheck:
    """Size, caption coverage and a decode test of one split; problems and warnings go to ``out``."""
    raw = getattr(data, "inner", data)  # below the guard: a failure here must show, not be replaced
    own = getattr(raw, "own_captions", None)
    row = SplitCheck(split, str(getattr(raw, "index_file", None) or data.spec.location or ""), len(data),
                     own if own is not None and own >= 0 else None)
    if row.own_captions is not None and row.own_captions < row.size and split == "train":
        out.notes.append(f"train: {row.size - row.own_captions} of {row.size} entries have no caption of their own "
                         f"(they train on the primer caption)")
    if not len(data):
        out.problems.append(f"{split}: no samples")
        return row
    n = min(decode, len(data))
    picks = np.sort(rng_for(seed, "data-check", data.spec.name, split).choice(len(data), size=n, replace=False))
    for i in picks.tolist():
        try:
            raw.images(np.array([i]), DECODE_SIZE)
        except BadSampleError as e:
            row.unreadable.append(e.where or str(e))
        row.decoded += 1
    bad = len(row.unreadable)
    if bad and bad == n:
        out.problems.append(f"{split}: none of {n} sampled images can be read, e.g. {row.unreadable[0]}")
    elif bad > max_bad:
        out.problems.append(f"{split}: {bad} of {n} sampled images cannot be read, more than data.max_bad_samples="
                            f"{max_bad}: {', '.join(row.unreadable[:3])}")
    elif bad:
        out.warnings.append(f"{split}: {bad} of {n} sampled images cannot be read (a run skips them): "
                            f"{', '.join(row.unreadable[:3])}")
    return row


def check_data(benchmark: Benchmark, missing_is_error: bool = True, pool: str | None = None,
               index_dir: str | Path | None = None, stream_file: str | None = None,
               stream_datasets: Sequence[str] = (), decode: int = 8, seed: int = 0, max_bad: int = 10) -> DataCheck:
    """The preflight of a run's data.

    Args:
        benchmark: built so that absent datasets are left out (``benchmark.left_out``), not fatal.
        missing_is_error: whether an absent dataset fails the run (``data.options.missing=error``).
        pool: ``data.mixture.pool`` when the run replays a pretraining pool.
        index_dir: fallback folder for shard indexes.
        stream_file: ``stream.file`` when ``stream.ordering=file``.
        stream_datasets: ``stream.datasets``.
        decode: images decoded per split (and from the pool).
        seed: which images.
        max_bad: ``data.max_bad_samples``.

    Returns:
        The report; ``report.ok`` is False when a run would fail.
    """
    report = DataCheck()
    for name, why in benchmark.left_out.items():
        if why.startswith("missing"):
            row = DatasetCheck(name, ABSENT, status="error" if missing_is_error else "warning")
            (row.problems if missing_is_error else row.warnings).append(
                why + ("" if missing_is_error else " (skipped: data.options.missing=skip)"))
            report.datasets.append(row.settle())
    report.datasets += [check_dataset(benchmark, s, decode, seed, max_bad) for s in benchmark.datasets.values()]
    if pool:
        report.pool = _check_pool(benchmark, pool, index_dir, decode, seed, max_bad)
    if stream_file:
        try:
            concepts = read_stream(stream_file)
            kept, note = fit_stream(concepts, benchmark, stream_datasets, source=f"stream file {stream_file}")
            report.stream = {"file": stream_file, "concepts": len(concepts), "kept": len(kept), "note": note}
        except (ValueError, KeyError) as e:
            report.problems.append(str(e.args[0] if isinstance(e, KeyError) and e.args else e))
    return report


def _check_pool(benchmark: Benchmark, pool: str, index_dir, decode: int, seed: int, max_bad: int) -> DatasetCheck:
    out = DatasetCheck("pretraining pool", "pretraining", "pairs")
    try:
        data = load_pool(benchmark, pool, index_dir=index_dir)
    except (OSError, ValueError, KeyError) as e:
        out.problems.append(f"{pool}: {e.args[0] if isinstance(e, KeyError) and e.args else e}")
        return out.settle()
    row = check_split(data, "train", decode, seed, out, max_bad)
    row.file = pool
    out.splits.append(row)
    return out.settle()


def format_report(report: DataCheck) -> str:
    """A text table: one row per dataset (and the pool), then each one's problems, warnings and notes."""
    rows = [("dataset", "role", "kind", "classes", "train", "test", "own captions", "decoded", "status", "primer")]
    absent = [c for c in report.datasets if c.role == ABSENT]
    checks = [c for c in report.datasets if c.role != ABSENT] + ([report.pool] if report.pool else [])
    for c in checks:
        by = {s.split: s for s in c.splits}
        own = [s for s in c.splits if s.own_captions is not None]
        rows.append((
            c.name, c.role, c.kind or "-", str(c.classes or "-"),
            str(by["train"].size) if "train" in by else "-", str(by["test"].size) if "test" in by else "-",
            f"{100.0 * sum(s.own_captions for s in own) / max(sum(s.size for s in own), 1):.0f}%" if own else "-",
            f"{sum(s.decoded - len(s.unreadable) for s in c.splits)}/{sum(s.decoded for s in c.splits)}",
            c.status, c.primer or "-",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    skipped = [c.name for c in absent if c.status != "error"]
    if skipped:
        lines.append(f"not on disk, skipped (data.options.missing=skip): {len(skipped)} dataset(s): {', '.join(skipped)}")
    for c in [*(c for c in absent if c.status == "error"), *checks]:
        lines += [f"{c.name}: {kind}: {m}" for kind, ms in (("error", c.problems), ("warning", c.warnings),
                                                            ("note", c.notes)) for m in ms]
    if report.stream:
        s = report.stream
        lines.append(s["note"] or f"stream file {s['file']}: all {s['concepts']} concepts usable")
    lines += [f"error: {p}" for p in report.problems]
    lines.append("ok: a run can start" if report.ok else "not ok: a run would fail on the errors above")
    return "\n".join(lines)
