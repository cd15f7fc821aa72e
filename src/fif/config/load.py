"""Presets, YAML files and dotted ``key=value`` overrides into a typed, validated :class:`Config`.

``load_config(preset, overrides)`` merges a preset with overrides, converts everything to the
dataclasses of :mod:`fif.config.schema`, and validates the whole tree up front, raising one
:class:`ConfigError` that lists every problem (unknown keys get the nearest valid names, wrong types get
the expected type).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from fif.config.schema import Config
from fif.config.validate import method_defaults_problems, validate
from fif.core.typed import ConfigError, from_dict

PRESET_DIR = Path(__file__).parent.parent / "presets"


# ----------------------------------------------------------------------------------------------
# Presets and overrides


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_yaml(path: str | Path) -> dict:
    """Parse a YAML mapping safely (no code execution).

    Raises:
        ConfigError: the file is missing, empty, not YAML (or not text), or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file {str(path)!r} does not exist"])
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: not valid YAML: {e}"]) from e
    if data is None:  # an empty file is a mistake, not "the built-in defaults"
        raise ConfigError([(
            f"{path}: the file is empty; a config needs at least one section (run, model, data, ...). "
            "Start from a preset: fif run --print-config --preset mini > my.yaml"
        )])
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

    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        if path[0] == "method" and len(path) >= 2 and path[1] not in ("name", "options", "defaults"):
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
        problems.extend(method_defaults_problems(cfg.method.defaults))
    if not problems:
        # the preset's defaults for the chosen method, under the explicit method.<option> values (recorded in
        # the run's config.yaml, so a resumed run reads the same options)
        cfg.method.options = {**cfg.method.defaults.get(cfg.method.name, {}), **cfg.method.options}
        problems.extend(validate(cfg))
    if problems:
        raise ConfigError(problems, source=f"preset {preset!r}" if preset and base is None else "")
    return cfg


# ----------------------------------------------------------------------------------------------
# Typed conversion


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
