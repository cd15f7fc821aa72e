"""State sources: where a merge reads its inputs from, one tensor at a time.

A merge of N checkpoints must not hold N models in memory. Operators therefore never see whole state
dicts; they see a :class:`StateSource` that can list its keys, describe a tensor (shape, dtype) without
loading it, and load one tensor on demand. Two implementations cover fif's needs: an in-memory mapping
(:class:`DictSource`, which copies nothing) and a safetensors file (:class:`SafetensorsSource`, which
reads one tensor per ``get``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Union, runtime_checkable

import torch
from safetensors import safe_open
from torch import nn


class MergeError(ValueError):
    """Inputs or options a merge cannot work with; the message names the key, source or option and the fix."""


@dataclass(frozen=True)
class TensorSpec:
    """What a merge needs to know about a tensor before loading it."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device = torch.device("cpu")

    @property
    def is_float(self) -> bool:
        return self.dtype.is_floating_point


@runtime_checkable
class StateSource(Protocol):
    """Lazy, read-only access to one model's state dict.

    Attributes:
        name: how error messages refer to this source (a file path, ``models[2]``, ...).
    """

    name: str

    def keys(self) -> list[str]:
        """Every key, in the model's order."""
        ...

    def spec(self, key: str) -> TensorSpec:
        """Shape and dtype of ``key`` without loading its values."""
        ...

    def get(self, key: str) -> torch.Tensor:
        """The tensor stored under ``key``. Callers must not modify it in place."""
        ...


class DictSource:
    """A state source over an in-memory mapping (e.g. ``model.state_dict()``); copies nothing."""

    def __init__(self, state: Mapping[str, torch.Tensor], name: str = "state dict"):
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise MergeError(f"{name}: value of key {key!r} is a {type(value).__name__}, not a tensor")
        self._state = state
        self.name = name

    def keys(self) -> list[str]:
        return list(self._state.keys())

    def spec(self, key: str) -> TensorSpec:
        t = self._state[key]
        return TensorSpec(tuple(t.shape), t.dtype, t.device)

    def get(self, key: str) -> torch.Tensor:
        return self._state[key]


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class SafetensorsSource:
    """A state source over a ``.safetensors`` file, read one tensor at a time.

    The file is opened with :func:`safetensors.safe_open` once to read its header, then again for each
    ``get``: a handle kept open would leave every page it ever read mapped into this process, so the
    resident memory of a 20-checkpoint merge would grow to 20 models (see docs/merging.md).
    """

    def __init__(self, path: str | os.PathLike, name: str | None = None):

        self.path = Path(path)
        self.name = name or str(self.path)
        if not self.path.is_file():
            raise MergeError(f"{self.name}: checkpoint file {str(self.path)!r} does not exist")
        try:
            with safe_open(str(self.path), framework="pt") as f:
                self._keys = list(f.keys())
                self._specs = {k: self._read_spec(f, k) for k in self._keys}
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise MergeError(f"{self.name}: cannot read {str(self.path)!r} as a safetensors file ({e})") from e

    def _read_spec(self, handle, key: str) -> TensorSpec:
        sl = handle.get_slice(key)
        dtype = _SAFETENSORS_DTYPES.get(sl.get_dtype())
        if dtype is None:  # an exotic dtype (fp8, ...): load it once to learn torch's name for it
            dtype = handle.get_tensor(key).dtype
        return TensorSpec(tuple(sl.get_shape()), dtype)

    def keys(self) -> list[str]:
        return list(self._keys)

    def spec(self, key: str) -> TensorSpec:
        return self._specs[key]

    def get(self, key: str) -> torch.Tensor:

        with safe_open(str(self.path), framework="pt") as f:
            return f.get_tensor(key)


SourceLike = Union[StateSource, Mapping[str, torch.Tensor], nn.Module, str, os.PathLike]


def as_source(obj: SourceLike, name: str) -> StateSource:
    """Wrap a mapping, module or safetensors path as a :class:`StateSource` (sources pass through).

    Raises:
        MergeError: an unsupported type, or a file that cannot be read.
    """
    if isinstance(obj, (str, os.PathLike)):
        return SafetensorsSource(obj, name=f"{name} ({os.fspath(obj)})")
    if isinstance(obj, nn.Module):
        return DictSource(obj.state_dict(), name=name)
    if isinstance(obj, Mapping):
        return DictSource(obj, name=name)
    if isinstance(obj, StateSource):
        return obj
    raise MergeError(
        f"{name}: cannot merge a {type(obj).__name__}; give a state dict, an nn.Module, a .safetensors path "
        f"or a StateSource"
    )


def _preview(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_compatible(sources: Sequence[StateSource]) -> list[str]:
    """Check that all sources hold the same keys with the same shapes; return the keys in order.

    The order is the first source's. Only headers are read (``keys`` and ``spec``), no tensor values.

    Raises:
        MergeError: listing, per source, the missing and unexpected keys, or the keys whose shapes differ
            (with both shapes).
    """
    ref = sources[0]
    keys = ref.keys()
    key_set = set(keys)
    problems = []
    for src in sources[1:]:
        other = src.keys()
        other_set = set(other)
        missing = [k for k in keys if k not in other_set]
        extra = [k for k in other if k not in key_set]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {_preview(missing)}")
            if extra:
                parts.append(f"unexpected {_preview(extra)}")
            problems.append(f"{src.name} vs {ref.name}: {'; '.join(parts)}")
    if problems:
        raise MergeError(
            "cannot merge models with different keys (are they the same architecture?):\n  - " + "\n  - ".join(problems)
        )
    mismatched = []
    for key in keys:
        shape = ref.spec(key).shape
        for src in sources[1:]:
            other_shape = src.spec(key).shape
            if other_shape != shape:
                mismatched.append(f"{key!r}: {tuple(shape)} in {ref.name} but {tuple(other_shape)} in {src.name}")
    if mismatched:
        more = f"\n  ... ({len(mismatched)} in all)" if len(mismatched) > 5 else ""
        raise MergeError("cannot merge tensors of different shapes:\n  - " + "\n  - ".join(mismatched[:5]) + more)
    return keys
