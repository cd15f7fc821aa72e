"""Presets, YAML files and dotted ``key=value`` overrides into a typed, validated :class:`Config`.

``load_config(preset, overrides)`` merges a preset with overrides, converts everything to the
dataclasses of :mod:`fif.config.schema`, and validates the whole tree up front, raising one
:class:`ConfigError` that lists every problem (unknown keys get the nearest valid names, wrong types get
the expected type).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from fif.config.schema import Config, ConfigError
from fif.config.validate import validate

PRESET_DIR = Path(__file__).parent.parent / "presets"


# ----------------------------------------------------------------------------------------------
# Presets and overrides


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_yaml(path: str | Path) -> dict:
    """Parse a YAML mapping safely (no code execution).

    Raises:
        ConfigError: the file is missing, not YAML, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file {str(path)!r} does not exist"])
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: not valid YAML: {e}"]) from e
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections (run, model, data, ...)"])
    return data


def preset_dict(name: str) -> dict:
    """The raw mapping of preset ``name`` (or of a YAML file path)."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        return read_yaml(name)
    if name not in preset_names():
        close = difflib.get_close_matches(name, preset_names(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError([f"unknown preset {name!r}{hint} Valid presets: {', '.join(preset_names())}"])
    return read_yaml(PRESET_DIR / f"{name}.yaml")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.lr=1e-4'`` → (['train', 'lr'], 0.0001). Values are parsed as YAML scalars/lists."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError([f"override {text!r} is not of the form section.key=value"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of ``data`` with each dotted override set (method options go to method.options)."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        if path[0] == "method" and len(path) >= 2 and path[1] not in ("name", "options"):
            path = ["method", "options", *path[1:]]
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return data


def load_config(preset: str | None = "mini", overrides: list[str] | None = None, base: dict | None = None) -> Config:
    """Resolve a preset (name or YAML path) plus overrides into a validated :class:`Config`.

    Args:
        preset: preset name (see :func:`preset_names`), a YAML path, or None for the defaults.
        overrides: dotted ``section.key=value`` strings, applied in order.
        base: a raw mapping used instead of the preset (e.g. a saved run's config.yaml).

    Raises:
        ConfigError: listing every problem at once.
    """
    data = dict(base) if base is not None else (preset_dict(preset) if preset else {})
    data = apply_overrides(data, overrides or [])
    problems: list[str] = []
    cfg = from_dict(Config, data, "", problems)
    if not problems:
        problems.extend(validate(cfg))
    if problems:
        raise ConfigError(problems, source=f"preset {preset!r}" if preset and base is None else "")
    return cfg


# ----------------------------------------------------------------------------------------------
# Typed conversion


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


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def field_help(cls: type = Config, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted key, help, default) for every leaf field, for `--help` style listings."""
    rows = []
    for f in dataclasses.fields(cls):
        tp = get_type_hints(cls)[f.name]
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(tp):
            rows.extend(field_help(tp, key))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            rows.append((key, f.metadata.get("help", ""), default))
    return rows
