"""Every random choice draws from a generator seeded from (run seed, purpose...), so the same seed gives
the same run in every process; the global RNG states are captured and restored for exact resume."""

from __future__ import annotations

import random
import zlib
from typing import Any

import numpy as np
import torch


def rng_for(seed: int, *purpose: int | str) -> np.random.Generator:
    """A generator seeded from (run seed, purpose...): strings are hashed stably (crc32), so the same
    seed and purpose give the same stream in every process and on every machine."""
    words = [int(seed) & 0xFFFFFFFF]
    for p in purpose:
        words.append(zlib.crc32(p.encode()) if isinstance(p, str) else int(p) & 0xFFFFFFFF)
    return np.random.default_rng(np.random.SeedSequence(words))


def seeded_generator(device: torch.device, seed: int, *purpose: int | str) -> torch.Generator | None:
    """A generator on ``device`` seeded from (run seed, purpose...); None on the meta device."""
    if device.type == "meta":
        return None
    return torch.Generator(device=device).manual_seed(int(rng_for(seed, *purpose).integers(2**62)))


def capture_rng() -> dict[str, Any]:
    """The global RNG states of torch (CPU and initialised CUDA devices), numpy and Python."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set the global RNG states captured by :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
