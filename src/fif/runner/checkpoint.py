"""Atomic, verified checkpoints for exact resume: weights as safetensors, everything else without pickles.

A checkpoint is a folder ``<run>/checkpoints/<name>/``::

    model.safetensors   the model's state_dict (strict load on resume)
    state.safetensors   every other tensor of the run state (optimizer moments, method state, RNG, ...)
    state.json          the rest of the run state as JSON; tensors appear as ``{"__tensor__": key}``
    manifest.json       format version, position, fif version, and the sha256 and size of every file

It is written into a hidden temporary folder (each file fsynced, the manifest last), then renamed into
place and the parent folder fsynced, so a crash leaves either the whole checkpoint or none. On load the
manifest's hashes are checked; :func:`latest_valid` walks back from the newest checkpoint to the
newest one that verifies and reports what it skipped.

Nothing here unpickles: state is a tree of dicts, lists, tuples, scalars, strings, numpy arrays and
tensors (see :func:`encode_tree`). Loading user-supplied torch files goes through :func:`load_tensor_file`
(safetensors, or ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file

from fif.core.io import (
    CheckpointError,
    StorageError,
    fsync_dir,
    safetensors_parts,
    sha256_file,
    write_synced,
)
from fif.core.version import __version__

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
TENSORS_FILE = "state.safetensors"
STATE_FILE = "state.json"
_NAME = re.compile(r"^task(\d{4})-(start|step(\d{7}))$")


@dataclass(frozen=True, order=True)
class Position:
    """Where a run stands.

    Attributes:
        task: the task in progress, or the next task to start (== number of tasks when all are done).
        started: the task has begun (``begin_task`` ran, steps may be done); False at a task boundary.
        step: optimizer steps done in ``task`` (0 at a boundary).

    The field order makes positions sort in run order: a boundary before its task's steps.
    """

    task: int
    started: bool = False
    step: int = 0

    @property
    def name(self) -> str:
        return f"task{self.task:04d}-step{self.step:07d}" if self.started else f"task{self.task:04d}-start"

    @classmethod
    def from_name(cls, name: str) -> "Position | None":
        m = _NAME.match(name)
        if m is None:
            return None
        if m.group(2) == "start":
            return cls(int(m.group(1)))
        return cls(int(m.group(1)), True, int(m.group(3)))

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "started": self.started, "step": self.step}


@dataclass
class Checkpoint:
    """A loaded, verified checkpoint."""

    path: Path
    position: Position
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    manifest: dict[str, Any]


# ----------------------------------------------------------------------------------------------
# State trees without pickles


def encode_tree(obj: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """JSON-able form of ``obj``; its tensors are moved into ``tensors`` under their tree path.

    Supported: dict (str or int keys), list, tuple, str, int, float (incl. nan/inf), bool, None,
    numpy arrays and scalars, torch tensors. Dicts with non-string keys or keys starting with ``__``
    become ``{"__items__": [[key, value], ...]}``; tuples ``{"__tuple__": [...]}``.

    Raises:
        TypeError: an unsupported value (the message gives its path in the tree).
    """
    if isinstance(obj, torch.Tensor):
        key = path or "tensor"
        tensors[key] = obj.detach()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype), "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_tree(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_tree(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        plain = all(isinstance(k, str) and not k.startswith("__") for k in obj)
        if plain:
            return {k: encode_tree(v, tensors, f"{path}/{k}") for k, v in obj.items()}
        for k in obj:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"state at {path or '/'}: dict key {k!r} is not a string or an integer")
        return {"__items__": [[k, encode_tree(v, tensors, f"{path}/{k}")] for k, v in obj.items()]}
    raise TypeError(
        f"state at {path or '/'}: {type(obj).__name__} cannot be checkpointed; use tensors, numbers, strings, "
        "lists, tuples or dicts (state_dict() must return plain data, never objects)"
    )


def decode_tree(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode_tree`."""
    if isinstance(obj, list):
        return [decode_tree(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        key = obj["__tensor__"]
        if key not in tensors:
            raise CheckpointError(f"state.json refers to tensor {key!r}, which {TENSORS_FILE} does not hold")
        return tensors[key]
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"]).reshape(obj["shape"])
    if "__tuple__" in obj:
        return tuple(decode_tree(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {k: decode_tree(v, tensors) for k, v in obj["__items__"]}
    return {k: decode_tree(v, tensors) for k, v in obj.items()}


# ----------------------------------------------------------------------------------------------
# RNG streams


# ----------------------------------------------------------------------------------------------
# Writing


def save_checkpoint(
    root: Path,
    position: Position,
    weights: dict[str, torch.Tensor],
    state: dict[str, Any],
    metadata: dict[str, Any] | None = None,
    folders: dict[str, Path] | None = None,
) -> Path:
    """Write a checkpoint folder atomically under ``root`` and return its path.

    Args:
        root: the run's checkpoint folder (created if needed).
        position: where the run stands; names the folder.
        weights: the model's state_dict.
        state: the rest of the run state (see :func:`encode_tree` for what it may hold).
        metadata: JSON-able provenance stored in the manifest (config hash, seed, ...).
        folders: finished folders (on the same filesystem) moved into the checkpoint under these names,
            e.g. a sharded run's optimizer shards; listed in the manifest.

    Raises:
        TypeError: ``state`` holds something that cannot be stored without pickling.
        OSError: the disk refused the write (nothing partial is left under the final name).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / position.name
    tmp = root / f".tmp-{position.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        tensors: dict[str, torch.Tensor] = {}
        tree = encode_tree(state, tensors)
        meta = {"fif_version": __version__, "format": str(FORMAT_VERSION)}
        parts = {
            MODEL_FILE: safetensors_parts(dict(weights), meta),
            TENSORS_FILE: safetensors_parts(tensors, meta),
            STATE_FILE: (json.dumps(tree).encode(),),
        }
        needed = sum(len(x) for file in parts.values() for x in file)
        try:
            files = {name: write_synced(tmp / name, *file) for name, file in parts.items()}
        except StorageError as e:  # name the checkpoint and its whole size, not one of its files
            raise StorageError.refused(e.errno, final, needed, what="checkpoint ") from e
        for name, folder in (folders or {}).items():
            os.replace(folder, tmp / name)  # a rename: written by every rank before, taken in atomically here
        manifest = {
            "format": FORMAT_VERSION,
            "fif_version": __version__,
            "position": position.to_dict(),
            "files": files,
            **({"folders": sorted(folders)} if folders else {}),
            **({"metadata": metadata} if metadata else {}),
        }
        write_synced(tmp / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
        fsync_dir(tmp)
        if final.exists():  # the same position written again (e.g. after a rollback): replace it
            old = root / f".old-{position.name}-{os.getpid()}"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# ----------------------------------------------------------------------------------------------
# Reading


def list_checkpoints(root: Path) -> list[tuple[Position, Path]]:
    """Checkpoint folders under ``root`` in run order (temporary and quarantined folders ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        pos = Position.from_name(p.name)
        if pos is not None and p.is_dir():
            found.append((pos, p))
    return sorted(found)


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check a checkpoint folder against its manifest; returns the manifest.

    Raises:
        CheckpointError: no manifest, an unknown format, a missing file, or a size/hash mismatch.
    """
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: no {MANIFEST} (torn write?)") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / MANIFEST}: not valid JSON ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {manifest.get('format') if isinstance(manifest, dict) else '?'!r} is not "
            f"{FORMAT_VERSION}, which this fif {__version__} reads"
        )
    _check_manifest(path, manifest)
    for name, entry in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing")
        if f.stat().st_size != entry["bytes"]:
            raise CheckpointError(f"{f}: {f.stat().st_size} bytes, the manifest says {entry['bytes']} (truncated?)")
        if sha256_file(f) != entry["sha256"]:
            raise CheckpointError(f"{f}: sha256 does not match the manifest (corrupt)")
    return manifest


def _check_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """The manifest's structure: every file with its size and hash, and a position that matches the folder.

    Raises:
        CheckpointError: naming what is malformed (an edited or corrupted manifest is skipped like a torn one).
    """
    files, pos = manifest.get("files"), manifest.get("position")
    if not isinstance(files, dict):
        raise CheckpointError(f"{path / MANIFEST}: 'files' is not an object of file entries (malformed)")
    for name in (MODEL_FILE, TENSORS_FILE, STATE_FILE):
        if name not in files:
            raise CheckpointError(f"{path}: the manifest lists no {name}")
    for name, entry in files.items():
        if (not isinstance(name, str) or "/" in name or name.startswith(".") or not isinstance(entry, dict)
                or not isinstance(entry.get("sha256"), str) or type(entry.get("bytes")) is not int):
            raise CheckpointError(f"{path / MANIFEST}: file entry {name!r} is not {{sha256, bytes}} (malformed)")
    ok = (isinstance(pos, dict) and type(pos.get("task")) is int and type(pos.get("step")) is int
          and type(pos.get("started")) is bool and pos["task"] >= 0 and pos["step"] >= 0)
    if not ok:
        raise CheckpointError(f"{path / MANIFEST}: 'position' is not {{task, started, step}} (malformed)")
    named = Position.from_name(path.name)
    if named is not None and named != Position(pos["task"], pos["started"], pos["step"]):
        raise CheckpointError(f"{path / MANIFEST}: its position {pos} is not the folder's ({path.name})")


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Verify and load a checkpoint folder.

    Raises:
        CheckpointError: the folder does not verify or cannot be decoded.
    """

    path = Path(path)
    manifest = verify_checkpoint(path)
    try:
        weights = load_file(str(path / MODEL_FILE), device=str(device))
        tensors = load_file(str(path / TENSORS_FILE), device="cpu")
        state = decode_tree(json.loads((path / STATE_FILE).read_text()), tensors)
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise CheckpointError(f"{path}: cannot be decoded ({type(e).__name__}: {e})") from e
    pos = manifest["position"]
    position = Position(int(pos["task"]), bool(pos["started"]), int(pos["step"]))
    return Checkpoint(path, position, weights, state, manifest)


def latest_valid(
    root: Path, device: str | torch.device = "cpu", warn: Callable[[str], None] | None = None
) -> tuple[Checkpoint | None, list[tuple[Path, str]]]:
    """The newest checkpoint under ``root`` that verifies, and the newer ones skipped (path, reason).

    Each skipped checkpoint is reported through ``warn`` (default: a logged warning), so a torn or
    corrupted latest checkpoint is never silently ignored.
    """
    warn = warn or log.warning
    skipped: list[tuple[Path, str]] = []
    for _, path in reversed(list_checkpoints(root)):
        try:
            ckpt = load_checkpoint(path, device)
        except CheckpointError as e:
            skipped.append((path, str(e)))
            continue
        for bad, reason in skipped:
            warn(f"checkpoint {bad.name} is unusable ({reason}); falling back to {path.name}")
        return ckpt, skipped
    for bad, reason in skipped:
        warn(f"checkpoint {bad.name} is unusable ({reason}); no earlier checkpoint verifies")
    return None, skipped


def quarantine(path: Path) -> Path:
    """Move an unusable checkpoint aside (``<name>.corrupt``) so the run can write that position again."""
    path = Path(path)
    target = path.with_name(path.name + ".corrupt")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(path, target)
    return target


def remove_after(root: Path, position: Position) -> list[Path]:
    """Delete every checkpoint later than ``position`` (an abandoned trajectory after a rollback)."""
    removed = []
    for pos, path in list_checkpoints(root):
        if pos > position:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def prune(root: Path, keep_last: int) -> list[Path]:
    """Keep the newest ``keep_last`` checkpoints (at least one); delete older ones and stale temp folders."""
    root = Path(root)
    removed = []
    found = list_checkpoints(root)
    for _, path in found[: max(len(found) - max(keep_last, 1), 0)]:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".old-", ".shards-")) and not p.name.endswith(f"-{os.getpid()}"):
                shutil.rmtree(p, ignore_errors=True)
    return removed


# ----------------------------------------------------------------------------------------------
# Loading user files safely


