"""Atomic file writes (temp file, fsync, rename) with the permissions a plain ``open()`` gives, and
safetensors bytes: nothing half-written is ever left under a final name."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save


def _file_mode() -> int:
    # What open() would give a new file: mkstemp makes its temp files 0600, which would leave every
    # result unreadable to the user's group (a shared cluster folder). Read the umask once, at import.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


# What the storage, not the program, refused: the disk or quota is full, the folder is read-only or not ours.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


class StorageError(OSError):
    """The storage refused a write (disk or quota full, read-only, no permission, file too large).

    The message names the file and how many bytes it needed; nothing half-written is left under a final
    name (see :func:`atomic_write_bytes`).
    """

    nbytes: int | None = None  # how many bytes the refused write needed, when known

    def __str__(self) -> str:  # the message alone: it already names the file
        return self.strerror or super().__str__()

    @classmethod
    def refused(cls, errno_: int, path: Path | str, nbytes: int | None = None, what: str = "") -> StorageError:
        """``No space left on device: cannot write PATH (33 MB); free space there or write somewhere else``."""
        size = f" ({human_bytes(nbytes)})" if nbytes else ""
        err = cls(errno_, f"{os.strerror(errno_)}: cannot write {what}{path}{size}; free space there or write "
                          "somewhere else", str(path))
        err.nbytes = nbytes
        return err


def human_bytes(n: float) -> str:
    """``1.5 GB``, ``33 MB``, ``512 B``."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


@contextlib.contextmanager
def explained_write(path: Path, nbytes: int | None = None) -> Iterator[None]:
    """Turn a write the storage refused into a :class:`StorageError` naming ``path`` (and ``nbytes``).

    Python's write errors often name no file (``[Errno 28] No space left on device``); this one does.
    """
    try:
        yield
    except StorageError:
        raise
    except OSError as e:
        if e.errno not in STORAGE_ERRNOS:
            raise
        raise StorageError.refused(e.errno, path, nbytes) from e


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write via a temp file in the same folder, fsync, then rename: readers never see a torn file.

    The file gets the permissions a plain ``open(path, "wb")`` would (0666 less the umask).

    Raises:
        StorageError: the disk is full, the folder read-only, ... (nothing is left behind).
    """
    path = Path(path)
    with explained_write(path, len(data)):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, _FILE_MODE)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_figure(fig: Any, path: Path) -> Path:
    """Save a matplotlib figure atomically, in the format the suffix names (png without one)."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png")
    return atomic_write_bytes(path, buf.getvalue())


def _storable(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors that share no memory (safetensors refuses aliases, e.g. tied weights)."""
    out, seen = {}, set()
    for key, t in tensors.items():
        t = t.detach().to("cpu")
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        full = t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size()
        if ptr in seen or not full:
            t = t.clone(memory_format=torch.contiguous_format)
        if ptr is not None:
            seen.add(ptr)
        out[key] = t
    return out


def safetensors_parts(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> tuple[bytes, memoryview]:
    """A safetensors file as (header, data) with a canonical header: equal inputs always give equal bytes.

    ``safetensors.torch.save`` writes ``__metadata__`` from a hash map whose order changes between
    processes; the header is re-serialised here with sorted metadata keys (tensor offsets are unchanged,
    the header is re-padded to 8 bytes as the format recommends). The data part is a view, not a copy.
    """

    raw = save(_storable(tensors), metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text, memoryview(raw)[8 + n :]


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """:func:`safetensors_parts` joined into one ``bytes``."""
    header, data = safetensors_parts(tensors, metadata)
    return header + data.tobytes()


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_synced(path: Path, *parts: bytes | memoryview) -> dict[str, Any]:
    """Write ``parts`` one after the other, fsync; returns the file's sha256 and size for the manifest.

    Raises:
        StorageError: the storage refused the write (the file may be partial: write into a temp folder).
    """
    h, size = hashlib.sha256(), 0
    with explained_write(path, sum(len(p) for p in parts)), open(path, "wb") as f:
        for part in parts:
            f.write(part)
            h.update(part)
            size += len(part)
        f.flush()
        os.fsync(f.fileno())
    return {"sha256": h.hexdigest(), "bytes": size}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def load_tensor_file(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file, or a torch file loaded with ``weights_only=True``.

    A torch file holding anything but tensors and plain containers (a pickled object, code) is
    refused: fif never unpickles user-supplied objects.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is not a safetensors/torch weights file, or holds pickled objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":

        try:
            return load_file(str(path), device=str(device))
        except Exception as e:
            raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from e
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # UnpicklingError for objects outside the weights-only allowlist
        raise CheckpointError(
            f"{path}: refused to load: it is not a plain tensor file (torch.load with weights_only=True failed: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}). Convert it to .safetensors from a trusted "
            "environment."
        ) from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a mapping of parameter names to tensors")
    return obj


class CheckpointError(ValueError):
    """A checkpoint is missing, torn, corrupt or unusable (the message names the file and the fix)."""
