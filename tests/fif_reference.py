"""Small data roots in the FiF reference pipeline's formats, generated (never copied from its files), for
the tests of reading FiF's data (on the test path: ``pythonpath`` in pyproject.toml).

What the reference's files look like, as far as these fixtures need it:

- ``<root>/<NAME>/...`` images; ``<info>/<NAME>_<split>.json`` maps an image path relative to
  ``<root>/<NAME>/`` to ``{classname, default_caption, primer_caption, synthetic_caption,
  synthetic_merged_caption (a one-item list), target}``; ``<info>/<NAME>_classnames.json`` lists the classes.
- The 224 px variant: ``<info>/<NAME>_<split>_224.json`` whose keys start with ``<NAME>_<split>_224/``,
  the folder ``<root>/<NAME>/<NAME>_<split>_224/``.
- Test splits have null default and merged captions; so do some datasets' train splits (AI2DIAGRAMS).
- FSCOCO: a retrieval set whose entries carry a class and a native ``default_caption``.
- Stream files: a JSON list of ``"<NAME>+++<classname>"``.
- Pool shards: uncompressed tars of ``<key>.jpg`` + ``<key>.txt``.
"""

from __future__ import annotations

import io
import json
import tarfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from fif.data.fif_catalogue import catalogue

CORRUPT_JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64  # a JPEG header and nothing decodable


def jpeg_bytes(seed: int, size: int = 24) -> bytes:
    """A small JPEG: a class-coloured square with seeded noise."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    pixels = np.clip(base + rng.integers(-40, 40, size=(size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def class_names(name: str, n: int) -> list[str]:
    return [f"{name.lower()} thing {i}" for i in range(n)]


def write_dataset(root: Path, name: str, classes: Sequence[str], per_class: dict[str, int],
                  info: Path | None = None, resized: Sequence[str] = (), resized_json_only: Sequence[str] = (),
                  null_train_captions: bool = False, native_captions: bool = False, image_size: int = 24) -> None:
    """One dataset in the reference layout.

    Args:
        root: the data root (images go to ``root/NAME``).
        name: the folder name (FiF's).
        classes: class names (written to ``NAME_classnames.json``).
        per_class: info-file split name -> images per class (e.g. ``{"train_mini": 3, "val": 2}``).
        info: where the JSON files go (FiF's ``data_lib/00_info``); None = ``root``.
        resized: split names that also get the ``_224`` JSON *and* its image folder.
        resized_json_only: split names that get only the ``_224`` JSON (the folder was not downloaded).
        null_train_captions: train-like splits get null captions too (as AI2DIAGRAMS's do).
        native_captions: entries carry a ``default_caption`` (FSCOCO's sketches, MSCOCO's pairs).
    """
    info = info or root
    info.mkdir(parents=True, exist_ok=True)
    (info / f"{name}_classnames.json").write_text(json.dumps(list(classes), indent=4))
    primer = catalogue()[name].primer
    for split, n in per_class.items():
        evaluation = split in ("test", "val")
        variants = [("", False)] + [("_224", True)] * (split in resized or split in resized_json_only)
        for suffix, small in variants:
            entries = {}
            for target, cls in enumerate(classes):
                for i in range(n):
                    rel = f"{name.lower()}/images/{split}/{target}/{i}.jpg"
                    key = f"{name}_{split}_224/{rel}" if small else rel
                    if not small or split not in resized_json_only:
                        path = root / name / key
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_bytes(jpeg_bytes(zlib.crc32(f"{name}/{target}".encode()) + i, image_size))
                    entries[key] = _entry(primer, cls, target, i, evaluation or null_train_captions, native_captions)
            (info / f"{name}_{split}{suffix}.json").write_text(json.dumps(entries, indent=4))


def _entry(primer: str, cls: str, target: int, i: int, null: bool, native: bool) -> dict:
    caption = f"{primer.format(cls)} Picture {i}, on a plain background."
    return {
        "classname": cls,
        "default_caption": f"A sketch of {cls} number {i} in a park." if native else None,
        "primer_caption": None if native else primer.format(cls),
        "synthetic_caption": None if (null or native) else [f"picture {i}"],
        "synthetic_merged_caption": None if (null or native) else [caption],
        "target": target,
    }


def write_pairs(root: Path, name: str, n: int, info: Path | None = None, image_size: int = 24) -> None:
    """An evaluation-only retrieval set (MSCOCO / FLICKR30K): test pairs with five captions, no classes."""
    info = info or root
    info.mkdir(parents=True, exist_ok=True)
    entries = {}
    for i in range(n):
        rel = f"{name.lower()}/val/{i:06d}.jpg"
        (root / name / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / name / rel).write_bytes(jpeg_bytes(10_000 + i, image_size))
        entries[rel] = {"classname": None, "default_caption": [f"scene {i} caption {k}" for k in range(5)],
                        "primer_caption": None, "synthetic_caption": None, "synthetic_merged_caption": None,
                        "target": -1}
    (info / f"{name}_test.json").write_text(json.dumps(entries, indent=4))


def write_shard(path: Path, n: int, corrupt: Sequence[int] = (), start: int = 0, image_size: int = 24) -> Path:
    """A WebDataset shard of ``n`` jpg + txt samples; the samples in ``corrupt`` get undecodable JPEGs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode="w") as tar:
        for i in range(n):
            key = f"{start + i:09d}"
            image = CORRUPT_JPEG if i in corrupt else jpeg_bytes(50_000 + start + i, image_size)
            for member, data in ((f"{key}.jpg", image), (f"{key}.txt", f"a web photo number {start + i}".encode())):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def write_stream(path: Path, concepts: Sequence[str]) -> Path:
    """A stream file as the reference writes them (a JSON list, 4-space indent)."""
    path.write_text(json.dumps(list(concepts), indent=4))
    return path
