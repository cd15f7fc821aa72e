"""WebDataset tar shards (the pretraining pool: LAION, CC-3M/12M, DataComp subsets) with random access
by index.

A shard is an uncompressed tar whose members are grouped into samples by key: the member path up to
the first dot of its file name (``00042/000000017.jpg`` and ``00042/000000017.txt`` are one sample).
A sample needs an image (jpg, jpeg, png, webp) and a caption: a ``.txt`` member (one caption a line) or
a ``.json`` member with a ``caption`` / ``text`` / ``captions`` field; samples without both are skipped.

Random access: each shard is scanned once for the byte offsets of its samples' members (headers only:
tarfile seeks over the data) and the index is cached next to the shard as ``<shard>.fifidx.npz``, or in
the fallback index folder when the shard's folder is read-only. A cached index is rebuilt when the
shard's size or modification time changes. Reads use ``os.pread`` at those offsets: nothing is ever
extracted (no path traversal is possible) and worker processes share no file position.

Patterns: ``/data/laion/{00000..00099}.tar`` (brace ranges keep zero padding), ``{a,b}`` alternatives,
shell globs, a folder (every ``*.tar`` in it), and several of these joined by ``::``.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
import re
import tarfile
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from fif.data.sources.common import SourceError, UnreadableImageError, decode_image, transform
from fif.data.specs import DatasetSpec, SplitData

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTS = ("txt", "json")
INDEX_SUFFIX = ".fifidx.npz"
INDEX_VERSION = 1
MAX_OPEN_SHARDS = 64  # per process; least recently used shards are closed beyond this
_BRACE = re.compile(r"\{([^{}]*)\}")


# ---------------------------------------------------------------------------------------------
# Patterns


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{000..099}`` ranges (keeping zero padding) and ``{a,b}`` alternatives, left to right.

    Raises:
        SourceError: a malformed range such as ``{5..x}``.
    """
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end():]
    if ".." in body:
        lo, _, hi = body.partition("..")
        if not (lo.isdigit() and hi.isdigit()):
            raise SourceError(f"shard pattern {pattern!r}: range {{{body}}} must be two integers, e.g. {{000..099}}")
        width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
        step = 1 if int(hi) >= int(lo) else -1
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    else:
        options = body.split(",")
    return [out for opt in options for out in expand_braces(head + opt + tail)]


def expand_shards(pattern: str, base: str | Path | None = None) -> list[Path]:
    """Every shard path a pattern names, in order (duplicates dropped).

    Args:
        pattern: brace pattern / glob / folder / file, or several joined by ``::``.
        base: folder relative paths are resolved against.

    Raises:
        SourceError: no shard found, or a named shard does not exist.
    """
    out: list[Path] = []
    absent: list[Path] = []
    for part in (p.strip() for p in str(pattern).split("::")):
        if not part:
            continue
        for item in expand_braces(part):
            path = Path(item).expanduser()
            if not path.is_absolute() and base is not None:
                path = Path(base) / path
            if any(c in item for c in "*?["):
                found = sorted(Path(p) for p in glob.glob(str(path)))
                if not found:
                    raise SourceError(f"shard pattern {item!r} matches no file")
                out.extend(found)
            elif path.is_dir():
                found = sorted(path.glob("*.tar"))
                if not found:
                    raise SourceError(f"{path}: folder has no *.tar shards")
                out.extend(found)
            elif path.is_file():
                out.append(path)
            else:
                absent.append(path)
    if absent:
        shown = ", ".join(str(p) for p in absent[:3]) + (", ..." if len(absent) > 3 else "")
        raise SourceError(f"{len(absent)} shard(s) of pattern {pattern!r} not found: {shown}")
    unique = list(dict.fromkeys(out))
    if not unique:
        raise SourceError(f"shard pattern {pattern!r} names no shard")
    return unique


def looks_like_shards(text: str) -> bool:
    """Whether a string is a shard pattern (``.tar``, braces, globs or ``::``) rather than a name or file."""
    return ".tar" in text or "{" in text or "::" in text or any(c in text for c in "*?[")


# ---------------------------------------------------------------------------------------------
# Per-shard index


@dataclass
class ShardIndex:
    """Byte ranges of every sample in one shard (members' data, not headers)."""

    image_offset: np.ndarray  # int64
    image_size: np.ndarray  # int64
    text_offset: np.ndarray  # int64
    text_size: np.ndarray  # int64
    text_json: np.ndarray  # bool: caption member is JSON (else plain text)

    def __len__(self) -> int:
        return len(self.image_offset)


def scan_shard(shard: Path) -> tuple[ShardIndex, int]:
    """Read a shard's tar headers and pair each sample's image and caption member.

    Returns:
        The index and the number of samples skipped for lacking an image or a caption.

    Raises:
        SourceError: the file is not an uncompressed tar.
    """
    samples: OrderedDict[str, dict[str, tuple[int, int, str]]] = OrderedDict()
    try:
        with tarfile.open(shard, mode="r:") as tar:
            for member in tar:
                if not member.isreg():  # directories, links and devices carry no sample data
                    continue
                folder, _, name = member.name.rpartition("/")
                stem, dot, ext = name.partition(".")
                if not dot or not stem:
                    continue
                ext = ext.lower()
                kind = "image" if ext in IMAGE_EXTS else "text" if ext in TEXT_EXTS else None
                if kind is None:
                    continue
                entry = samples.setdefault(f"{folder}/{stem}", {})
                if kind not in entry or (kind == "text" and ext == "txt"):  # prefer .txt captions over .json
                    entry[kind] = (member.offset_data, member.size, ext)
    except tarfile.ReadError as e:
        raise SourceError(f"{shard}: not an uncompressed tar ({e}); random access needs plain .tar shards "
                          f"(decompress .tar.gz shards first)") from e
    complete = [s for s in samples.values() if "image" in s and "text" in s]
    index = ShardIndex(
        image_offset=np.array([s["image"][0] for s in complete], dtype=np.int64),
        image_size=np.array([s["image"][1] for s in complete], dtype=np.int64),
        text_offset=np.array([s["text"][0] for s in complete], dtype=np.int64),
        text_size=np.array([s["text"][1] for s in complete], dtype=np.int64),
        text_json=np.array([s["text"][2] == "json" for s in complete], dtype=bool),
    )
    return index, len(samples) - len(complete)


def index_paths(shard: Path, index_dir: str | Path | None) -> list[Path]:
    """Where the shard's index may be cached, in order of preference: next to the shard, then
    ``index_dir`` (named by a hash of the shard's absolute path)."""
    candidates = [shard.with_name(shard.name + INDEX_SUFFIX)]
    if index_dir is not None:
        digest = hashlib.sha1(str(shard.resolve()).encode()).hexdigest()[:16]
        candidates.append(Path(index_dir) / f"{shard.stem}-{digest}{INDEX_SUFFIX}")
    return candidates


def _stamp(shard: Path) -> np.ndarray:
    st = shard.stat()
    return np.array([INDEX_VERSION, st.st_size, st.st_mtime_ns], dtype=np.int64)


def _load_cached(path: Path, stamp: np.ndarray) -> ShardIndex | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if not np.array_equal(z["stamp"], stamp):
                return None
            return ShardIndex(*(z[k] for k in ("image_offset", "image_size", "text_offset", "text_size", "text_json")))
    except (OSError, KeyError, ValueError):
        return None  # missing, stale format or corrupt: rebuild


def _save(path: Path, index: ShardIndex, stamp: np.ndarray) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError:
        return False
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, stamp=stamp, **{k: getattr(index, k) for k in
                                         ("image_offset", "image_size", "text_offset", "text_size", "text_json")})
        os.replace(tmp, path)
        return True
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        return False


def shard_index(shard: Path, index_dir: str | Path | None = None) -> ShardIndex:
    """The shard's index: from the cache when fresh, else scanned and cached (atomically).

    Raises:
        SourceError: the shard is not an uncompressed tar.
    """
    stamp = _stamp(shard)
    candidates = index_paths(shard, index_dir)
    for path in candidates:
        cached = _load_cached(path, stamp)
        if cached is not None:
            return cached
    index, skipped = scan_shard(shard)
    if skipped:
        log.warning("%s: skipped %d sample(s) without both an image and a caption", shard, skipped)
    if not any(_save(path, index, stamp) for path in candidates):
        log.warning("%s: could not cache its index (read-only folder and no index folder); it will be "
                    "rescanned next time", shard)
    return index


# ---------------------------------------------------------------------------------------------
# The split


@dataclass
class WdsSplit:
    """Samples of a list of shards, addressable by a global index (shard order, then member order).

    File descriptors are opened lazily per process and never pickled, so DataLoader workers each open
    their own; reads use ``os.pread`` (no shared file position).
    """

    spec: DatasetSpec
    split: str
    shards: list[str]
    shard_of: np.ndarray  # int32, per sample
    image_offset: np.ndarray
    image_size: np.ndarray
    text_offset: np.ndarray
    text_size: np.ndarray
    text_json: np.ndarray
    targets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _fds: OrderedDict = field(default_factory=OrderedDict, repr=False)

    def __post_init__(self) -> None:
        if len(self.targets) == 0:
            self.targets = np.full(len(self.image_offset), -1, dtype=np.int64)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fds"] = OrderedDict()
        return state

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Close this process's open shard files."""
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass
        if hasattr(self, "_fds"):
            self._fds.clear()

    def __len__(self) -> int:
        return len(self.image_offset)

    def _read(self, index: int, offset: np.ndarray, size: np.ndarray) -> bytes:
        shard = int(self.shard_of[index])
        fd = self._fds.get(shard)
        if fd is None:
            try:
                fd = os.open(self.shards[shard], os.O_RDONLY)
            except OSError as e:
                raise SourceError(f"{self.shards[shard]}: cannot open shard ({e})") from e
            self._fds[shard] = fd
            while len(self._fds) > MAX_OPEN_SHARDS:
                os.close(self._fds.popitem(last=False)[1])
        else:
            self._fds.move_to_end(shard)
        n = int(size[index])
        data = os.pread(fd, n, int(offset[index]))
        if len(data) != n:
            raise SourceError(f"{self.shards[shard]}: shard is shorter than its index (sample {index}); it changed "
                              f"while in use — delete {Path(self.shards[shard]).name}{INDEX_SUFFIX} to reindex")
        return data

    def captions(self, index: int) -> Sequence[str]:
        """The sample's captions (plain text: one a line; JSON: ``caption``/``text``/``captions``)."""
        raw = self._read(index, self.text_offset, self.text_size)
        where = f"{self.shards[int(self.shard_of[index])]} (sample {index})"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SourceError(f"{where}: caption is not UTF-8 ({e})") from e
        caps = _json_captions(text, where) if self.text_json[index] else [t.strip() for t in text.splitlines()]
        caps = [c for c in caps if c]
        return caps or [""]

    def images(self, indices: np.ndarray, size: int, train: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode and transform images ``indices``: float (B, 3, size, size) in [0, 1].

        Raises:
            UnreadableImageError: an image member does not decode (naming the shard and sample).
        """
        out = torch.empty((len(indices), 3, size, size), dtype=torch.float32)
        for k, i in enumerate(np.asarray(indices, dtype=np.int64)):
            data = self._read(int(i), self.image_offset, self.image_size)
            where = f"{self.shards[int(self.shard_of[i])]} (sample {int(i)})"
            try:
                img = decode_image(data, where)
            except SourceError as e:
                raise UnreadableImageError(str(e), index=int(i), where=where) from e
            out[k] = transform(img, size, train, generator)
        return out.clamp_(0.0, 1.0)


def _json_captions(text: str, where: str) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SourceError(f"{where}: caption JSON is malformed ({e})") from e
    if isinstance(data, dict):
        for key in ("caption", "text", "captions"):
            value = data.get(key)
            if isinstance(value, str):
                return [value.strip()]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return [v.strip() for v in value]
    raise SourceError(f"{where}: caption JSON needs a 'caption', 'text' or 'captions' field")


def read_shards(spec: DatasetSpec, split: str, pattern: str, base: str | Path | None = None,
                index_dir: str | Path | None = None) -> WdsSplit:
    """Open the shards a pattern names as one split (indexing each shard once, then from cache).

    Args:
        spec: the dataset's spec (a retrieval set or a pretraining pool).
        split: split name.
        pattern: see :func:`expand_shards`.
        base: folder relative patterns are resolved against.
        index_dir: fallback folder for index caches when a shard's folder is read-only.

    Raises:
        SourceError: a missing or compressed shard, or no usable samples at all.
    """
    if spec.kind == "classification" and spec.role != "pretraining":
        raise SourceError(f"dataset {spec.name!r}: WebDataset shards are read as image-caption pairs; use "
                          f"kind: retrieval or role: pretraining (or a manifest / class folders for labels)")
    shards = expand_shards(pattern, base)
    parts = [shard_index(s, index_dir) for s in shards]
    total = sum(len(p) for p in parts)
    if total == 0:
        raise SourceError(f"shard pattern {pattern!r}: no sample has both an image ({', '.join(IMAGE_EXTS)}) "
                          f"and a caption (.txt or .json)")
    cat = {k: np.concatenate([getattr(p, k) for p in parts]) for k in
           ("image_offset", "image_size", "text_offset", "text_size", "text_json")}
    shard_of = np.concatenate([np.full(len(p), i, dtype=np.int32) for i, p in enumerate(parts)])
    return WdsSplit(spec=spec, split=split, shards=[str(s) for s in shards], shard_of=shard_of, **cat)


# ---------------------------------------------------------------------------------------------
# Writing (fixtures, and turning any split into shards)


def write_shards(split: SplitData, folder: str | Path, samples_per_shard: int = 1000, image_size: int = 64,
                 prefix: str = "") -> list[Path]:
    """Write a split as WebDataset shards ``folder/<prefix>00000.tar, ...`` (PNG image + txt captions).

    Returns:
        The shard paths, in order.
    """

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard_no, start in enumerate(range(0, len(split), samples_per_shard)):
        idx = np.arange(start, min(start + samples_per_shard, len(split)))
        pixels = (split.images(idx, image_size).clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        path = folder / f"{prefix}{shard_no:05d}.tar"
        tmp = path.with_name(path.name + ".tmp")
        with tarfile.open(tmp, mode="w") as tar:
            for i, img in zip(idx.tolist(), pixels):
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG", compress_level=1)
                _add(tar, f"{i:09d}.png", buf.getvalue())
                _add(tar, f"{i:09d}.txt", "\n".join(split.captions(i)).encode("utf-8"))
        os.replace(tmp, path)
        paths.append(path)
    return paths


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
