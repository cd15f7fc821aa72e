"""FiF's preprocessed on-disk layout: write a split to it, and read one back as :class:`SplitData`.

For a dataset stored under the prefix ``ROOT`` (e.g. ``/data/fif/CUB200``)::

    ROOT/                      images (any relative layout; fif writes ROOT/<split>/<index>.png)
    ROOT_classnames.json       JSON list of class names; position = target id
    ROOT_<split>.json          {relative image path: {classname, default_caption, primer_caption,
                                synthetic_caption, synthetic_merged_caption, target}}

Training text is ``default_caption`` when present, else ``synthetic_merged_caption``; a list gives
every entry as a caption of that image (training draws one, evaluation uses the first). Where both are
null (FiF's test splits, and the training splits of AI2DIAGRAMS, BIRDSNAP, DOLLARSTREET, ...) the
entry's ``primer_caption`` stands in, else the dataset's primer filled with the entry's class, as FiF's
reference does.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from fif.data.specs import BadSampleError, DatasetSpec, SplitData

RESIZED_SUFFIX = "_224"  # FiF's 224 px variant: <PREFIX>_<split>_224.json listing <PREFIX>/<NAME>_<split>_224/...
CAPTION_KEYS = ("default_caption", "synthetic_merged_caption")  # the sample's own text, in this order
FALLBACK_KEY = "primer_caption"  # the class prompt FiF writes into each entry


class LayoutError(ValueError):
    """A FiF-layout file is missing or malformed (the message names the file and the fix)."""


class UnreadableLayoutImage(LayoutError, BadSampleError):
    """One listed image is missing or undecodable (the benchmark's guard skips it; see
    :mod:`fif.data.bad_samples`)."""


# ---------------------------------------------------------------------------------------------
# Paths


def classnames_path(root: str | Path) -> Path:
    """``ROOT_classnames.json`` for dataset prefix ``root``."""
    root = Path(root)
    return root.with_name(f"{root.name}_classnames.json")


def split_path(root: str | Path, split: str) -> Path:
    """``ROOT_<split>.json`` for dataset prefix ``root``."""
    root = Path(root)
    return root.with_name(f"{root.name}_{split}.json")


def prompts_path(root: str | Path) -> Path:
    """``ROOT_prompts.json`` for dataset prefix ``root``: the primer and templates ``write_split`` saw (optional;
    FiF's own files have none, their prompts are in the catalogue)."""
    root = Path(root)
    return root.with_name(f"{root.name}_prompts.json")


def read_prompts(root: str | Path) -> dict[str, Any] | None:
    """The ``primer`` and ``templates`` of ``ROOT_prompts.json``, or None without that file.

    Raises:
        LayoutError: the file is malformed (naming it and what a valid one holds).
    """
    path = prompts_path(root)
    if not path.is_file():
        return None
    data = _read_json(path, 'a mapping {"primer": "... {} ...", "templates": [...]}')
    data = data if isinstance(data, dict) else {}
    primer, templates = data.get("primer"), data.get("templates", [])
    if not (isinstance(primer, str) and primer.count("{}") == 1 and isinstance(templates, list)
            and all(isinstance(t, str) and t.count("{}") == 1 for t in templates)):
        raise LayoutError(f'{path}: expected {{"primer": "a prompt with one {{}}", "templates": [prompts with one {{}}]}}')
    return {"primer": primer, "templates": list(templates)}


def _atomic_write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class SplitFile:
    """Where one split of a dataset is read from.

    Attributes:
        name: the info file's split name (``train_mini``, ``test_224``, ...): the file ``<meta>_<name>.json``.
        path: that file.
        resized: whether it lists the 224 px copies.
        note: why a ``_224`` file present was not used, if so.
    """

    name: str
    path: Path
    resized: bool = False
    note: str = ""


def resolve_split(images: Path, meta: Path, file_split: str, resized: bool) -> SplitFile | None:
    """The file to read for info-file split ``file_split``, as the reference decides: the ``_224`` JSON
    only when its image folder ``<images>/<NAME>_<split>_224/`` exists too, else the full-size JSON."""
    images, meta, note = Path(images), Path(meta), ""
    if resized:
        small = split_path(meta, file_split + RESIZED_SUFFIX)
        folder = images / f"{images.name}_{file_split}{RESIZED_SUFFIX}"
        if small.is_file() and folder.is_dir():
            return SplitFile(file_split + RESIZED_SUFFIX, small, True)
        if small.is_file():
            note = f"{small.name} is present but not its image folder {folder}; reading the full-size images"
    full = split_path(meta, file_split)
    return SplitFile(file_split, full, False, note) if full.is_file() else None


# ---------------------------------------------------------------------------------------------
# Writing


def write_split(split: SplitData, root: str | Path, image_size: int | None = None) -> Path:
    """Write one split to FiF's layout under prefix ``root`` (images as PNG).

    Classification images get ``classname``, ``primer_caption`` (the primer filled with the class) and
    ``target``; every image gets its caption list as ``default_caption`` and ``synthetic_caption``, and
    its first caption as ``synthetic_merged_caption``. The JSON files are written atomically.

    Args:
        split: any split (e.g. a mini-world split).
        root: dataset prefix; images go to ``root/<split>/<index>.png``.
        image_size: side of the written images; None keeps the split's own size (in-memory splits) or
            uses 224 for file-backed splits.

    Returns:
        The path of the split's JSON file.
    """

    root = Path(root)
    spec = split.spec
    folder = root / split.split
    folder.mkdir(parents=True, exist_ok=True)
    size = image_size or _native_size(split) or 224
    entries: dict[str, dict[str, Any]] = {}
    batch = 256
    for start in range(0, len(split), batch):
        idx = np.arange(start, min(start + batch, len(split)))
        pixels = (split.images(idx, size).clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for i, img in zip(idx, pixels):
            rel = f"{split.split}/{i:06d}.png"
            Image.fromarray(img).save(root / rel, optimize=False, compress_level=1)
            entries[rel] = _entry(spec, list(split.captions(int(i))), int(split.targets[i]))
    _atomic_write_json(classnames_path(root), list(spec.classnames))
    _atomic_write_json(prompts_path(root), {"primer": spec.primer, "templates": list(spec.templates)})
    path = split_path(root, split.split)
    _atomic_write_json(path, entries)
    return path


def _native_size(split: SplitData) -> int | None:
    pixels = getattr(split, "pixels", None)
    return int(pixels.shape[-1]) if isinstance(pixels, torch.Tensor) else None


def _entry(spec: DatasetSpec, captions: list[str], target: int) -> dict[str, Any]:
    has_class = spec.kind == "classification" and 0 <= target < spec.num_classes
    classname = spec.classnames[target] if has_class else None
    return {
        "classname": classname,
        "default_caption": captions,
        "primer_caption": spec.primer.format(classname) if classname is not None else None,
        "synthetic_caption": captions,
        "synthetic_merged_caption": captions[0],
        "target": target if has_class else -1,
    }


# ---------------------------------------------------------------------------------------------
# Reading


def read_classnames(root: str | Path) -> list[str]:
    """The class names of the dataset at prefix ``root`` (``ROOT_classnames.json``).

    Raises:
        LayoutError: the file is missing, not JSON, or not a list of strings.
    """
    path = classnames_path(root)
    data = _read_json(path, "a JSON list of class names (position = target id)")
    if not isinstance(data, list) or not all(isinstance(c, str) for c in data):
        raise LayoutError(f"{path}: expected a JSON list of class names (strings), got {type(data).__name__}")
    return data


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise LayoutError(f"{path}: file not found; FiF's layout needs it ({what}). Check data.root and the dataset name.")
    try:
        with open(path) as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LayoutError(f"{path}: not valid JSON ({e}); re-extract or re-materialize this dataset") from e


def _own_captions(entry: dict[str, Any], path: Path, key: str) -> list[str] | None:
    """The entry's own caption(s) (``default_caption``, else ``synthetic_merged_caption``), or None."""
    for name in CAPTION_KEYS:
        value = entry.get(name)
        if isinstance(value, str) and value.strip():
            return [value]
        if isinstance(value, list) and value:
            if not all(isinstance(v, str) for v in value):
                raise LayoutError(f"{path}: entry {key!r}: {name} must be a string or a list of strings")
            return list(value)
    return None


def _fallback_caption(entry: dict[str, Any], spec: DatasetSpec, target: int) -> list[str] | None:
    """FiF's stand-in where an entry has no caption of its own: its primer caption, else the primer
    filled with its class."""
    value = entry.get(FALLBACK_KEY)
    if isinstance(value, str) and value.strip():
        return [value]
    if 0 <= target < len(spec.classnames):
        return [spec.primer.format(spec.classnames[target])]
    return None


def _target_of(entry: dict[str, Any], path: Path, key: str, classnames: Sequence[str], index: dict[str, int],
               names_file: str) -> int:
    target = entry.get("target")
    if isinstance(target, bool) or not isinstance(target, (int, type(None))):
        raise LayoutError(f"{path}: entry {key!r}: target must be an integer, got {target!r}")
    if not classnames:  # no class list: nothing a target could index (e.g. MSCOCO's pairs)
        return -1
    if target is None or target < 0:
        classname = entry.get("classname")
        if classname is None:
            return -1
        if classname not in index:
            raise LayoutError(f"{path}: entry {key!r}: classname {classname!r} is not in {names_file}")
        return index[classname]
    if target >= len(classnames):
        raise LayoutError(f"{path}: entry {key!r}: target {target} is out of range for {len(classnames)} classes "
                          f"({names_file})")
    return int(target)


def decode_failure(e: Exception) -> str:
    """Why an image could not be decoded, and what to do, for a message that already names the file."""
    if isinstance(e, Image.DecompressionBombError):
        return (f"refused to decode: {e} Shrink the image, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it "
                "(it guards against decompression bombs)")
    return f"cannot decode image ({type(e).__name__}: {e}); the file is corrupt or not an image"


@dataclass
class FifLayoutSplit:
    """A file-backed split in FiF's layout; images are decoded on demand.

    Attributes:
        spec: the dataset's spec.
        split: split name.
        root: dataset prefix (images are resolved against ``root/``).
        paths: image paths, relative to ``root/``, in JSON order.
        texts: caption list per image.
        targets: class id per image (-1 for none).
        index_file: the JSON the paths came from (for messages); None = ``ROOT_<split>.json``.
        own_captions: how many entries carry a caption of their own (the rest use the primer caption).
    """

    spec: DatasetSpec
    split: str
    root: Path
    paths: list[str]
    texts: list[list[str]]
    targets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    index_file: Path | None = None
    own_captions: int = -1

    def __len__(self) -> int:
        return len(self.paths)

    def captions(self, index: int) -> Sequence[str]:
        return self.texts[index]

    def images(self, indices: np.ndarray, size: int, train: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode, transform and stack images.

        Train: RandomResizedCrop(size, scale=(0.9, 1), bicubic) drawn from ``generator``; test:
        Resize(size) + CenterCrop(size), bicubic (as FiF and open_clip do).

        Returns:
            float32 (B, 3, size, size) in [0, 1].

        Raises:
            UnreadableLayoutImage: an image file is missing or cannot be decoded (a LayoutError).
        """
        out = torch.empty((len(indices), 3, size, size), dtype=torch.float32)
        for k, i in enumerate(np.asarray(indices, dtype=np.int64)):
            img = self._decode(int(i))
            out[k] = random_resized_crop(img, size, generator) if train else resize_center_crop(img, size)
        return out.clamp_(0.0, 1.0)

    def _decode(self, index: int) -> torch.Tensor:

        path = self.root / self.paths[index]
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except FileNotFoundError as e:
            listed_in = self.index_file or split_path(self.root, self.split)
            raise UnreadableLayoutImage(f"{path}: image listed in {listed_in} is missing",
                                        index=index, where=str(path)) from e
        except Exception as e:  # PIL raises many types (DecompressionBombError, SyntaxError, EOFError, ...)
            raise UnreadableLayoutImage(f"{path}: {decode_failure(e)}", index=index, where=str(path)) from e
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def read_split(root: str | Path, split: str, spec: DatasetSpec | None = None,
               meta_prefix: str | Path | None = None, split_name: str | None = None) -> FifLayoutSplit:
    """Load one split of a dataset stored in FiF's layout.

    Args:
        root: dataset prefix (``ROOT``; the JSON files are its siblings unless ``meta_prefix`` is set).
        split: split name (``train``, ``test``, ...), i.e. the JSON file ``ROOT_<split>.json``.
        spec: the dataset's spec; None builds one from the files (classification when a non-empty
            classnames file exists, else retrieval; role adaptation; primer ``a photo of a {}.``).
        meta_prefix: prefix of the JSON files when they live apart from the images (FiF's reference
            code keeps them in ``data_lib/00_info/<NAME>_*.json``); None = ``root``.
        split_name: the name the returned split carries (e.g. ``train`` when ``split`` is the resized
            variant ``train_224``); None = ``split``.

    Returns:
        The split (captions and targets parsed; images decoded lazily).

    Raises:
        LayoutError: a file is missing or malformed (naming the file and entry).
    """
    root = Path(root)
    meta = Path(meta_prefix) if meta_prefix is not None else root
    path = split_path(meta, split)
    data = _read_json(path, "a mapping of image path → caption record")
    if not isinstance(data, dict) or not data:
        raise LayoutError(f"{path}: expected a non-empty JSON object mapping image paths to records")
    has_classes = classnames_path(meta).is_file()
    classnames = read_classnames(meta) if has_classes else []
    if spec is None:
        kind = "classification" if classnames else "retrieval"
        prompts = read_prompts(meta) or {"primer": "a photo of a {}.", "templates": []}
        spec = DatasetSpec(name=root.name, kind=kind, role="adaptation", classnames=tuple(classnames),
                           primer=prompts["primer"], templates=tuple(prompts["templates"]), source="fif",
                           location=str(root))
    index = {c: i for i, c in enumerate(classnames)}
    names_file = classnames_path(meta).name
    paths, texts, targets, own = [], [], [], 0
    for key, entry in data.items():
        if not isinstance(entry, dict):
            raise LayoutError(f"{path}: entry {key!r} must be an object with caption fields, got {type(entry).__name__}")
        target = _target_of(entry, path, key, classnames, index, names_file)
        captions = _own_captions(entry, path, key)
        own += captions is not None
        captions = captions or _fallback_caption(entry, spec, target)
        if captions is None:
            raise LayoutError(f"{path}: entry {key!r} has no caption: it needs a 'default_caption', "
                              f"'synthetic_merged_caption' or 'primer_caption', or a class ('target'/'classname')")
        paths.append(key)
        texts.append(captions)
        targets.append(target)
    return FifLayoutSplit(spec=spec, split=split_name or split, root=root, paths=paths, texts=texts,
                          targets=np.asarray(targets, dtype=np.int64), index_file=path, own_captions=own)


# ---------------------------------------------------------------------------------------------
# Transforms (drawn from an explicit generator so file-backed training is reproducible)


def random_resized_crop(img: torch.Tensor, size: int, generator: torch.Generator | None = None,
                        scale: tuple[float, float] = (0.9, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """torchvision's RandomResizedCrop (bicubic), with its box drawn from ``generator``.

    Args:
        img: float (3, H, W).
        size: output side.
        generator: random source (None = torch's global one).
        scale: range of the crop's area as a fraction of the image.
        ratio: range of the crop's aspect ratio.

    Returns:
        float (3, size, size).
    """

    _, h, w = img.shape
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u = torch.rand(4, generator=generator).tolist()
        target = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        aspect = math.exp(log_lo + u[1] * (log_hi - log_lo))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = min(int(u[2] * (h - ch + 1)), h - ch)
            left = min(int(u[3] * (w - cw + 1)), w - cw)
            break
    else:  # no valid box in 10 tries (only for extreme aspect ratios): use the whole image
        ch, cw = h, w
        top, left = 0, 0
    return TF.resized_crop(img, top, left, ch, cw, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)


def resize_center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` (bicubic), then crop the centre square."""

    img = TF.resize(img, [size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(img, [size, size])
