"""Small helpers that several method families share: option checks, seeded device generators, and
meta-device stand-ins (the budget's FLOP count runs a method's step on the meta device)."""

from __future__ import annotations

from typing import Collection

import torch

# ----------------------------------------------------------------------------------------------
# Option checks (a method's Config.__post_init__); the messages name the key as ``method.<name>``


def check_positive(name: str, value: float, integer: bool = False) -> None:
    """Raises ValueError unless ``value`` > 0 (and, with ``integer``, an int that is not a bool)."""
    if integer and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError(f"method.{name} must be an integer, got {value!r}")
    if not value > 0:
        raise ValueError(f"method.{name} must be > 0, got {value!r}")


def check_non_negative(name: str, value: float, integer: bool = False) -> None:
    """Raises ValueError unless ``value`` >= 0 (and, with ``integer``, an int that is not a bool)."""
    if integer and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError(f"method.{name} must be an integer, got {value!r}")
    if not value >= 0:
        raise ValueError(f"method.{name} must be >= 0, got {value!r}")


def check_choice(name: str, value: str, choices: Collection[str]) -> None:
    """Raises ValueError, listing the choices, unless ``value`` is one of them."""
    if value not in choices:
        raise ValueError(f"method.{name} must be one of {', '.join(choices)}; got {value!r}")


# ----------------------------------------------------------------------------------------------
# Devices


def stand_in(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t``, or an empty meta tensor of its shape when the step runs on the meta device."""
    return torch.empty_like(t, device="meta") if device.type == "meta" and t.device.type != "meta" else t
