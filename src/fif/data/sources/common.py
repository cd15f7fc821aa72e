"""Pieces every file-backed source shares: the error type, image decoding and transforms, a split of
image files, class-name files, ``{split}`` locations, and a split restricted to some of its classes.

Sources never unpickle anything: pickles (and torch files, which are pickles) are refused by name
before they are opened, and numpy files are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from fif.data.sources.fif_layout import decode_failure, random_resized_crop, resize_center_crop
from fif.data.specs import BadSampleError, DatasetSpec, InMemorySplit, SplitData

PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".joblib")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SPLIT_PLACEHOLDER = "{split}"


class SourceError(ValueError):
    """A user's data file is missing or malformed; the message names the file (and key) and the fix."""


class UnreadableImageError(SourceError, BadSampleError):
    """One sample's image is missing or undecodable (the benchmark's guard skips it; see
    :mod:`fif.data.bad_samples`)."""


def refuse_pickle(path: str | Path, what: str) -> None:
    """Raise if ``path`` names a pickle-based file (fif never unpickles user data).

    Raises:
        SourceError: naming the file and the formats accepted instead.
    """
    if str(path).lower().endswith(PICKLE_SUFFIXES):
        raise SourceError(
            f"{path}: refusing to load a pickle-based file as {what} (unpickling can run arbitrary code); "
            f"convert it to JSON, CSV/JSONL or plain text"
        )


def resolve(location: str | Path, base: str | Path | None = None, split: str | None = None) -> Path:
    """``location`` with ``{split}`` filled in, made absolute against ``base`` when relative."""
    text = str(location)
    if SPLIT_PLACEHOLDER in text:
        if split is None:
            raise SourceError(f"location {text!r} has a {SPLIT_PLACEHOLDER} placeholder but no split was given")
        text = text.replace(SPLIT_PLACEHOLDER, split)
    path = Path(text).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path


def read_classnames_file(path: str | Path) -> list[str] | dict[str, str]:
    """Class names from a user file: a JSON list (position = target id), a JSON object mapping a raw
    label (e.g. a folder name or a manifest label) to a class name, or a text file with one name a line.

    Raises:
        SourceError: the file is missing, a pickle, malformed, empty, or lists a name twice.
    """
    path = Path(path)
    refuse_pickle(path, "class names")
    if not path.is_file():
        raise SourceError(f"{path}: class-names file not found (classnames: in the benchmark YAML)")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SourceError(f"{path}: not valid JSON ({e}); expected a list of class names") from e
        if isinstance(data, dict):
            if not data or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
                raise SourceError(f"{path}: a class-name mapping must be a non-empty object of strings to strings")
            _check_unique(list(data.values()), path)
            return dict(data)
        if not isinstance(data, list) or not all(isinstance(c, str) for c in data):
            raise SourceError(f"{path}: expected a JSON list of class names (strings) or an object label → name")
        names = data
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise SourceError(f"{path}: the class-names file is empty")
    _check_unique(names, path)
    return names


def _check_unique(names: list[str], path: Path) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise SourceError(f"{path}: class name {name!r} appears twice; class names must be unique")
        seen.add(name)


# ---------------------------------------------------------------------------------------------
# Images


def decode_image(data: str | Path | bytes, where: str) -> torch.Tensor:
    """Decode an image file (or its bytes) to float (3, H, W) in [0, 1], RGB.

    Args:
        data: a path or the encoded bytes.
        where: what to name in an error (the file, or ``shard.tar:member``).

    Raises:
        SourceError: the file is missing or is not a decodable image.
    """

    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            arr = np.asarray(im.convert("RGB"))
    except FileNotFoundError as e:
        raise SourceError(f"{where}: image file not found") from e
    except Exception as e:  # PIL raises many types (DecompressionBombError, SyntaxError, EOFError, struct.error, ...)
        raise SourceError(f"{where}: {decode_failure(e)}") from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def transform(img: torch.Tensor, size: int, train: bool, generator: torch.Generator | None) -> torch.Tensor:
    """FiF's transforms: RandomResizedCrop(scale 0.9–1, bicubic) when training, else Resize + CenterCrop."""
    return random_resized_crop(img, size, generator) if train else resize_center_crop(img, size)


@dataclass
class ImageFileSplit:
    """A split of image files on disk (class folders, caption manifests); decoded on demand.

    Attributes:
        spec: the dataset's spec.
        split: split name.
        paths: absolute image paths.
        texts: caption list per image (at least one each).
        targets: class id per image (-1 for none).
        listed_in: the folder or manifest the paths came from (for error messages).
    """

    spec: DatasetSpec
    split: str
    paths: list[str]
    texts: list[list[str]]
    targets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    listed_in: str = ""

    def __post_init__(self) -> None:
        n = len(self.paths)
        if len(self.texts) != n:
            raise SourceError(f"{self.listed_in}: {len(self.texts)} caption lists for {n} images")
        if len(self.targets) == 0:
            self.targets = np.full(n, -1, dtype=np.int64)
        self.targets = np.asarray(self.targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def captions(self, index: int) -> Sequence[str]:
        return self.texts[index]

    def images(self, indices: np.ndarray, size: int, train: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode and transform images ``indices``: float (B, 3, size, size) in [0, 1].

        Raises:
            SourceError: an image is missing or corrupt (naming it and where it was listed).
        """
        out = torch.empty((len(indices), 3, size, size), dtype=torch.float32)
        for k, i in enumerate(np.asarray(indices, dtype=np.int64)):
            path = self.paths[int(i)]
            try:
                img = decode_image(path, f"{path} (listed in {self.listed_in})")
            except SourceError as e:
                raise UnreadableImageError(str(e), index=int(i), where=str(path)) from e
            out[k] = transform(img, size, train, generator)
        return out.clamp_(0.0, 1.0)


def class_captions(spec: DatasetSpec, target: int) -> list[str]:
    """The default caption of a classification sample without its own: the primer with its class."""
    return [spec.primer.format(spec.classnames[target])]


@dataclass
class ClassSubsetSplit:
    """The samples of some classes of a split (a benchmark YAML's ``classes:``), targets renumbered to the
    subset's class order. Reads go through the wrapped split; an unreadable sample is reported by its index
    here, so the benchmark's guard (:mod:`fif.data.bad_samples`) replaces it within the subset.

    Attributes:
        spec: the subset's spec (its classnames are the kept classes).
        split: split name.
        inner: the whole split.
        keep: the kept samples' indices in ``inner``, ascending.
        targets: class id per kept sample, in ``spec.classnames``.
    """

    spec: DatasetSpec
    split: str
    inner: SplitData
    keep: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.keep)

    def captions(self, index: int) -> Sequence[str]:
        return self.inner.captions(int(self.keep[index]))

    def images(self, indices: np.ndarray, size: int, train: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """The wrapped split's images of samples ``indices`` (of the subset).

        Raises:
            BadSampleError: as the wrapped split raises it, with the subset's index of the sample.
        """
        try:
            return self.inner.images(self.keep[np.asarray(indices, dtype=np.int64)], size, train, generator)
        except BadSampleError as e:
            e.index = int(np.searchsorted(self.keep, e.index))
            raise


def class_subset(data: SplitData, spec: DatasetSpec) -> SplitData:
    """The samples of ``data`` (a classification split of all its classes) whose class is in ``spec.classnames``,
    with targets renumbered to that order. In-memory splits stay in memory (a new :class:`InMemorySplit`).

    Raises:
        SourceError: a class of ``spec`` that ``data`` does not have.
    """
    full = list(data.spec.classnames)
    missing = [c for c in spec.classnames if c not in full]
    if missing:
        raise SourceError(f"dataset {spec.name!r}: class {missing[0]!r} is not one of its {len(full)} classes")
    new_id = np.full(len(full) + 1, -1, dtype=np.int64)  # old id -> new id; the extra slot maps target -1
    new_id[[full.index(c) for c in spec.classnames]] = np.arange(len(spec.classnames))
    keep = np.flatnonzero(new_id[np.asarray(data.targets, dtype=np.int64)] >= 0)
    targets = new_id[np.asarray(data.targets, dtype=np.int64)[keep]]
    if isinstance(data, InMemorySplit):
        return InMemorySplit(spec, data.split, data.pixels[torch.as_tensor(keep)], [data.texts[i] for i in keep],
                             targets)
    return ClassSubsetSplit(spec, data.split, data, keep, targets)
