"""The method registry: one ``@register_method("name")`` line next to each class, checked at import.

Registration checks what can be checked before a run: the options are a dataclass, every hook of the
:class:`~fif.methods.base.UpdateMethod` contract is there, and an optional capability is declared whole
(a method that builds its own optimizer also reports its state size).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Callable

from fif.core.deps import missing_dependency_problems
from fif.core.typed import ConfigError, from_dict
from fif.methods.base import CAPABILITIES, UpdateMethod, capability_members
from fif.model.clip import Clip
from fif.model.loss import ClipLoss

_METHODS: dict[str, type[UpdateMethod]] = {}


def contract_problems(cls: type) -> list[str]:
    """What keeps ``cls`` from being a registrable method (empty if nothing)."""
    problems = []
    if not dataclasses.is_dataclass(getattr(cls, "Config", None)):
        problems.append(f"{cls.__name__}.Config must be a dataclass of the method's options (NoOptions for none)")
    missing = [m for m in capability_members(UpdateMethod) if not callable(getattr(cls, m, None))]
    if missing:
        problems.append(f"{cls.__name__} lacks the hooks {', '.join(missing)}; build it on fif.methods.BaseMethod")
    for capability in CAPABILITIES:
        members = capability_members(capability)
        have = [m for m in members if callable(getattr(cls, m, None))]
        if have and len(have) < len(members):
            lacking = [m for m in members if m not in have]
            problems.append(
                f"{cls.__name__} defines {', '.join(have)} but not {', '.join(lacking)}: the capability "
                f"{capability.__name__} needs all of {', '.join(members)}"
            )
    return problems


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: register an UpdateMethod class under ``name``, constructed as ``cls(clip, config)``.

    Raises:
        ValueError: ``name`` is registered already.
        TypeError: the class breaks the contract (see :func:`contract_problems`).
    """

    def wrap(cls: type) -> type:
        if name in _METHODS:
            raise ValueError(
                f"update method {name!r} is registered twice ({_METHODS[name].__module__} and {cls.__module__})"
            )
        problems = contract_problems(cls)
        if problems:
            raise TypeError(f"update method {name!r}: " + "; ".join(problems))
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def registered_methods() -> dict[str, type[UpdateMethod]]:
    """Every registered method class by name, in registration order."""
    return dict(_METHODS)


def method_class(name: str) -> type[UpdateMethod]:
    """The class registered as ``name``.

    Raises:
        KeyError: no such method; the message suggests near names and lists the valid ones.
    """
    if name not in _METHODS:
        close = difflib.get_close_matches(name, list(_METHODS), n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"unknown method.name {name!r}{hint} Valid: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def method_config_problems(name: str, options: dict) -> list[str]:
    """Problems with ``method.name`` and its options (empty if valid)."""

    if name not in _METHODS:
        try:
            method_class(name)
        except KeyError as e:
            return [str(e.args[0])]
    cls = _METHODS[name]
    # optional packages the method imports (its ``requires``): missing ones are found now, not after setup
    problems = missing_dependency_problems(f"method.name={name}", getattr(cls, "requires", ()),
                                           "choose another method.name")
    if not dataclasses.fields(cls.Config):
        return problems + ([f"method {name!r} takes no options, got method.{', method.'.join(sorted(options))}"]
                           if options else [])
    from_dict(cls.Config, options, "method", problems)
    return problems


def shard_problem(name: str) -> str:
    """Why method ``name`` cannot train sharded weights (``train.distributed=fsdp``), with the fix; "" if it can
    (or is unknown: :func:`method_config_problems` reports that)."""
    cls = _METHODS.get(name)
    if cls is None or getattr(cls, "shardable", False):
        return ""
    can = ", ".join(n for n, c in _METHODS.items() if getattr(c, "shardable", False))
    return (f"train.distributed=fsdp: method {name!r} cannot train sharded weights (its loss, hooks or state read "
            f"the whole weights, or the model it is given is not the one sharded); use train.distributed=ddp, or "
            f"one of the methods that shard: {can}")


def build_method(name: str, options: dict, clip: Clip, clip_loss: ClipLoss | None = None) -> UpdateMethod:
    """Construct method ``name`` with validated ``options`` for ``clip``.

    Args:
        name: a registered method name.
        options: the ``method.*`` options (validated into the method's ``Config``).
        clip: the model the method updates (it may inject modules into it).
        clip_loss: the CLIP loss's settings (``train.label_smoothing``); None = the default :class:`ClipLoss`.

    Raises:
        KeyError: unknown ``name``.
        ConfigError: bad options (every problem at once).
    """

    cls = method_class(name)
    problems: list[str] = []
    cfg = from_dict(cls.Config, options, "method", problems)
    if problems:
        raise ConfigError(problems)
    method = cls(clip, cfg)
    if clip_loss is not None:
        method.clip_loss = clip_loss
    return method
