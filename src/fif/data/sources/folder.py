"""Class folders: ``ROOT/<class>/**/<image>`` (classification), or a folder of images with sidecar
captions (retrieval sets and pretraining pools).

Captions: an optional sidecar text file next to each image (``cat_01.jpg`` → ``cat_01.txt``, one
caption a line); without one, a classification image gets the dataset's primer filled with its class
(e.g. "A photo of a tabby cat."). Images without a sidecar in a retrieval set are an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from fif.data.sources.common import IMAGE_SUFFIXES, ImageFileSplit, SourceError, class_captions
from fif.data.specs import DatasetSpec


def class_folders(folder: str | Path) -> list[str]:
    """The class folder names under ``folder`` (sorted; hidden folders skipped).

    Raises:
        SourceError: ``folder`` is missing or has no class folders.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError(f"{folder}: folder not found (a class-folder dataset needs ROOT/<class>/<images>)")
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise SourceError(f"{folder}: no class folders found; expected ROOT/<class>/<images>")
    return names


def image_files(folder: Path) -> list[Path]:
    """Every image under ``folder`` (recursively, sorted, hidden files skipped)."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def sidecar_captions(image: Path) -> list[str]:
    """The captions in ``image``'s sidecar ``.txt`` (one a line), or [] when it has none."""
    side = image.with_suffix(".txt")
    if not side.is_file():
        return []
    try:
        text = side.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SourceError(f"{side}: caption file is not UTF-8 text ({e})") from e
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_folder(spec: DatasetSpec, split: str, folder: str | Path,
                label_map: Mapping[str, str] | None = None) -> ImageFileSplit:
    """Load one split from class folders (classification) or a flat folder with sidecars (otherwise).

    Args:
        spec: the dataset's spec (its class names fix the target ids).
        split: split name.
        folder: the split's folder.
        label_map: folder name → class name, for folders not named like their class (e.g. WordNet ids);
            None = folder names are class names.

    Returns:
        The split; images are decoded on demand.

    Raises:
        SourceError: a missing folder, a folder that maps to no class of ``spec``, no images, or a
            retrieval image without captions.
    """
    folder = Path(folder)
    if spec.kind == "classification" and spec.role != "pretraining":
        return _read_classes(spec, split, folder, label_map)
    if not folder.is_dir():
        raise SourceError(f"{folder}: folder not found for dataset {spec.name!r}, split {split!r}")
    paths, texts = [], []
    for image in image_files(folder):
        caps = sidecar_captions(image)
        if not caps:
            raise SourceError(f"{image}: no captions; a {spec.kind} folder needs a sidecar "
                              f"{image.with_suffix('.txt').name} with one caption a line")
        paths.append(str(image))
        texts.append(caps)
    if not paths:
        raise SourceError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found for dataset {spec.name!r}")
    return ImageFileSplit(spec, split, paths, texts, np.full(len(paths), -1, dtype=np.int64), listed_in=str(folder))


def _read_classes(spec: DatasetSpec, split: str, folder: Path, label_map: Mapping[str, str] | None) -> ImageFileSplit:
    index = {c: i for i, c in enumerate(spec.classnames)}
    paths, texts, targets = [], [], []
    for raw in class_folders(folder):
        name = label_map.get(raw) if label_map is not None else raw
        if name is None or name not in index:
            names = ", ".join(list(index)[:10]) + (", ..." if len(index) > 10 else "")
            hint = ("the class-names mapping has no entry for it" if label_map is not None
                    else f"it is not one of the dataset's class names ({names})")
            raise SourceError(f"{folder / raw}: class folder of dataset {spec.name!r} maps to no class: {hint}")
        target = index[name]
        for image in image_files(folder / raw):
            paths.append(str(image))
            texts.append(sidecar_captions(image) or class_captions(spec, target))
            targets.append(target)
    if not paths:
        raise SourceError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found in the class folders")
    return ImageFileSplit(spec, split, paths, texts, np.asarray(targets, dtype=np.int64), listed_in=str(folder))
