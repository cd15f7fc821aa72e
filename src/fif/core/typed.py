"""Typed dataclasses from plain mappings (YAML, overrides): every problem collected with its dotted key,
unknown keys answered with the nearest valid names. Used for the config tree and each method's own options."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str, problems: list[str]) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
            return tp()
        return from_dict(tp, value, key, problems)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            problems.append(f"{key}: must not be null (expected {_type_name(tp)})")
            return None
        for arg in args:
            if arg is type(None):
                continue
            sub: list[str] = []
            out = _convert(arg, value, key, sub)
            if not sub:
                return out
        problems.append(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is Literal:
        if value not in get_args(tp):
            problems.append(f"{key}: {value!r} is not one of {_type_name(tp)}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        problems.append(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and math.isfinite(number):
            return number
        problems.append(f"{key}: expected a finite number, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        problems.append(f"{key}: expected a string, got {value!r}")
        return value
    if tp in (list, tuple) or origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        problems.append(f"{key}: expected a list, got {value!r}")
        return value
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        problems.append(f"{key}: expected a mapping, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict, prefix: str, problems: list[str]) -> Any:
    """Build dataclass ``cls`` from ``data``, appending every problem (with its dotted key) to ``problems``."""
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            where = f"section {prefix!r}" if prefix else "the top level"
            problems.append(f"{path}: unknown key in {where}{hint} Valid keys: {', '.join(names)}")
            continue
        kwargs[key] = _convert(hints[key], value, path, problems)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        problems.append(f"{prefix or 'config'}: {e}")
        return cls()


class ConfigError(ValueError):
    """One or more problems in a configuration; ``problems`` lists each as ``key: what is wrong``."""

    def __init__(self, problems: list[str], source: str = ""):
        self.problems, self.source = list(problems), source
        head = f"invalid configuration{f' ({source})' if source else ''}:"
        if len(self.problems) == 1:  # one problem, one line
            super().__init__(f"{head} {self.problems[0]}")
        else:
            super().__init__("\n  - ".join([head, *self.problems]))

    def __reduce__(self):  # pickles whole (e.g. raised on every rank of a data-parallel run)
        return type(self), (self.problems, self.source)
