"""Caption manifests: a CSV (with a header row) or JSONL file listing images with their caption(s) and
an optional class label.

Columns / keys (names configurable): ``image`` (path, relative to the manifest's folder unless
absolute), ``caption`` (a string; in JSONL also a list of strings) and ``label`` (a class name, or a
target id). Rows naming the same image are merged: their captions are collected in order (the common
one-row-per-caption layout of COCO-style CSVs). A classification row without a caption gets the
dataset's primer filled with its class.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from fif.data.sources.common import ImageFileSplit, SourceError, class_captions, refuse_pickle
from fif.data.specs import DatasetSpec

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


@dataclass(frozen=True)
class ManifestKeys:
    """Which column / key holds what."""

    image: str = "image"
    caption: str = "caption"
    label: str = "label"


@dataclass
class Row:
    line: int
    image: str
    captions: list[str]
    label: Any


def manifest_format(path: Path) -> str:
    """``csv``, ``tsv`` or ``jsonl`` from the file suffix.

    Raises:
        SourceError: a pickle or an unknown suffix.
    """
    refuse_pickle(path, "a caption manifest")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise SourceError(f"{path}: unknown manifest format {path.suffix!r}; use one of {', '.join(FORMATS)}")
    return fmt


def iter_rows(path: str | Path, keys: ManifestKeys = ManifestKeys()) -> Iterator[Row]:
    """Parse a manifest into rows (no images opened).

    Raises:
        SourceError: the file is missing or malformed, naming the line and the key.
    """
    path = Path(path)
    fmt = manifest_format(path)
    if not path.is_file():
        raise SourceError(f"{path}: manifest not found")
    if fmt == "jsonl":
        yield from _jsonl_rows(path, keys)
    else:
        yield from _csv_rows(path, keys, "\t" if fmt == "tsv" else ",")


def _csv_rows(path: Path, keys: ManifestKeys, delimiter: str) -> Iterator[Row]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        header = reader.fieldnames or []
        if keys.image not in header:
            raise SourceError(f"{path}: no {keys.image!r} column in the header {header}; name the image column "
                              f"{keys.image!r} or set options.image_key")
        try:
            for row in reader:
                line = reader.line_num
                image = (row.get(keys.image) or "").strip()
                if not image:
                    raise SourceError(f"{path}:{line}: empty {keys.image!r}")
                caption = (row.get(keys.caption) or "").strip()
                label = (row.get(keys.label) or "").strip() or None
                yield Row(line, image, [caption] if caption else [], label)
        except csv.Error as e:
            raise SourceError(f"{path}:{reader.line_num}: malformed CSV ({e})") from e
        except UnicodeDecodeError as e:
            raise SourceError(f"{path}: not UTF-8 text ({e})") from e


def _jsonl_rows(path: Path, keys: ManifestKeys) -> Iterator[Row]:
    with open(path, encoding="utf-8") as fh:
        try:
            lines = list(fh)
        except UnicodeDecodeError as e:
            raise SourceError(f"{path}: not UTF-8 text ({e})") from e
    if path.suffix.lower() == ".json":  # a JSON list of objects is accepted too
        try:
            data = json.loads("".join(lines))
        except json.JSONDecodeError as e:
            raise SourceError(f"{path}: not valid JSON ({e}); expected a list of objects or JSON lines") from e
        records = list(enumerate(data, 1)) if isinstance(data, list) else None
        if records is None:
            raise SourceError(f"{path}: expected a JSON list of objects with {keys.image!r} and {keys.caption!r}")
    else:
        records = []
        for n, text in enumerate(lines, 1):
            if text.strip():
                try:
                    records.append((n, json.loads(text)))
                except json.JSONDecodeError as e:
                    raise SourceError(f"{path}:{n}: not valid JSON ({e})") from e
    for n, rec in records:
        yield _record_row(path, n, rec, keys)


def _record_row(path: Path, n: int, rec: Any, keys: ManifestKeys) -> Row:
    if not isinstance(rec, dict):
        raise SourceError(f"{path}:{n}: expected an object, got {type(rec).__name__}")
    image = rec.get(keys.image)
    if not isinstance(image, str) or not image.strip():
        raise SourceError(f"{path}:{n}: {keys.image!r} must be a non-empty string (the image path)")
    caption = rec.get(keys.caption)
    if caption is None:
        captions = []
    elif isinstance(caption, str):
        captions = [caption.strip()] if caption.strip() else []
    elif isinstance(caption, list) and all(isinstance(c, str) for c in caption):
        captions = [c.strip() for c in caption if c.strip()]
    else:
        raise SourceError(f"{path}:{n}: {keys.caption!r} must be a string or a list of strings")
    label = rec.get(keys.label)
    if label is not None and (isinstance(label, bool) or not isinstance(label, (str, int))):
        raise SourceError(f"{path}:{n}: {keys.label!r} must be a class name or an integer target id")
    return Row(n, image.strip(), captions, label)


def manifest_labels(path: str | Path, keys: ManifestKeys = ManifestKeys()) -> list[str]:
    """The distinct labels of a manifest, sorted (to infer class names).

    Raises:
        SourceError: a row has no label, or labels are integer ids (which need a class-names file).
    """
    labels = set()
    for row in iter_rows(path, keys):
        if row.label is None:
            raise SourceError(f"{path}:{row.line}: no {keys.label!r}; a classification manifest needs a label "
                              f"on every row")
        if isinstance(row.label, int):
            raise SourceError(f"{path}:{row.line}: {keys.label!r} is an integer id; give the class names with "
                              f"classnames: in the benchmark YAML")
        labels.add(str(row.label))
    if not labels:
        raise SourceError(f"{path}: the manifest has no rows")
    return sorted(labels)


def read_manifest(spec: DatasetSpec, split: str, path: str | Path, keys: ManifestKeys = ManifestKeys(),
                  image_root: str | Path | None = None, label_map: Mapping[str, str] | None = None) -> ImageFileSplit:
    """Load one split from a caption manifest.

    Args:
        spec: the dataset's spec (class names fix target ids; none for retrieval sets and pools).
        split: split name.
        path: the manifest file.
        keys: column / key names.
        image_root: folder relative image paths are resolved against (default: the manifest's folder).
        label_map: raw label → class name (from a class-names mapping file); None = labels are names.

    Raises:
        SourceError: naming the manifest line and key of the first problem.
    """
    path = Path(path)
    base = Path(image_root) if image_root is not None else path.parent
    classify = spec.kind == "classification" and spec.role != "pretraining"
    index = {c: i for i, c in enumerate(spec.classnames)}
    order: dict[str, int] = {}
    paths: list[str] = []
    texts: list[list[str]] = []
    targets: list[int] = []
    for row in iter_rows(path, keys):
        target = _target(row, path, keys, spec, index, label_map) if classify else -1
        image = str(Path(row.image) if Path(row.image).is_absolute() else base / row.image)
        if image in order:
            k = order[image]
            if targets[k] != target:
                raise SourceError(f"{path}:{row.line}: image {row.image!r} appears again with another label")
            texts[k].extend(row.captions)
            continue
        order[image] = len(paths)
        paths.append(image)
        texts.append(list(row.captions))
        targets.append(target)
    if not paths:
        raise SourceError(f"{path}: the manifest has no rows")
    for k, caps in enumerate(texts):
        if not caps:
            if not classify:
                raise SourceError(f"{path}: image {paths[k]!r} has no {keys.caption!r}; every image of a "
                                  f"{spec.kind} set needs at least one caption")
            texts[k] = class_captions(spec, targets[k])
    return ImageFileSplit(spec, split, paths, texts, np.asarray(targets, dtype=np.int64), listed_in=str(path))


def _target(row: Row, path: Path, keys: ManifestKeys, spec: DatasetSpec, index: Mapping[str, int],
            label_map: Mapping[str, str] | None) -> int:
    if row.label is None:
        raise SourceError(f"{path}:{row.line}: no {keys.label!r}; every row of classification dataset "
                          f"{spec.name!r} needs a label")
    raw = str(row.label)
    name = label_map.get(raw, raw) if label_map is not None else raw
    if name in index:
        return index[name]
    if isinstance(row.label, int) or raw.isdigit():
        target = int(raw)
        if 0 <= target < len(index):
            return target
        raise SourceError(f"{path}:{row.line}: target id {target} is out of range for {len(index)} classes")
    raise SourceError(f"{path}:{row.line}: label {raw!r} is not a class of dataset {spec.name!r} "
                      f"({_preview(list(index))})")


def _preview(names: Sequence[str], n: int = 10) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")
