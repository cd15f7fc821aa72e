"""The mini world's vocabulary of factors and the pieces every sampler shares.

A *sampler* draws a chunk of images and captions for given class targets from a numpy generator
(:data:`Sampler`); a :class:`MiniDataset` pairs one with its :class:`~fif.data.specs.DatasetSpec`.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Callable

import numpy as np

from fif.data.mini import glyphs as G
from fif.data.mini import render as R
from fif.data.specs import DatasetSpec

F32 = np.float32

BASE_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "star")
NOVEL_SHAPES: tuple[str, ...] = ("heart", "ring", "crescent", "pentagon", "hexagon", "arrow", "semicircle", "trapezoid")
# Radius / image side. "small" is about 9 px wide at 32 px: smaller shapes are hard to tell apart there.
SIZES: dict[str, float] = {"small": 0.15, "medium": 0.21, "large": 0.29}
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.31, 0.31),
    "top right": (0.69, 0.31),
    "bottom left": (0.31, 0.69),
    "bottom right": (0.69, 0.69),
    "center": (0.5, 0.5),
}
COUNTS: tuple[str, ...] = ("one", "two", "three", "four", "five", "six")
DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
DEFAULT_LETTERS = "ABCEHKMRSX"  # visually distinct at 32 px
LOWER_CASE = string.ascii_lowercase  # the pool's printed letters (every one, whatever mini_letters' classes)
SPRITES: tuple[str, ...] = ("square", "ellipse", "heart")
QUADRANTS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
RELATIONS: tuple[str, ...] = ("above", "below", "beside", "inside")
FILL_CLASSES: tuple[str, ...] = R.FILLS[1:]  # every fill but "solid", which the pool already shows
SHADE_HUES: tuple[str, ...] = ("red", "yellow", "green", "blue")
SHADES: tuple[str, ...] = tuple(f"{tone} {hue}" for tone in ("light", "dark") for hue in SHADE_HUES)
CALM_BACKGROUNDS = np.array([R.BACKGROUNDS.index(b) for b in ("plain", "noisy", "gradient")])  # do not hide fine detail


def _held_out_colours() -> np.ndarray:
    # Colour-shape pairs the pool never shows: shape i lacks colours i and i + 2 (12 of the 48 pairs; every
    # shape keeps 6 colours and every colour 4 or 5 shapes, so shape still cannot be guessed from colour).
    return np.array([(i, (i + 2) % len(R.COLOR_NAMES)) for i in range(len(BASE_SHAPES))], dtype=np.int64)


HELD_OUT_COLOURS = _held_out_colours()  # (shapes, 2): the colours each base shape never wears in the pool
POOL_COLOURS = np.array([[c for c in range(len(R.COLOR_NAMES)) if c not in row] for row in HELD_OUT_COLOURS])


@dataclass
class Draw:
    """What a sampler draws with: the random source, the image side and the split."""

    rng: np.random.Generator
    size: int
    split: str


Sample = tuple[np.ndarray, list[list[str]]]  # float32 (N, 3, S, S) canvas, caption lists
Sampler = Callable[[Draw, np.ndarray], Sample]


@dataclass(frozen=True)
class MiniDataset:
    """One mini-world dataset: its spec and how to draw it.

    Attributes:
        spec: the dataset's static description.
        sampler: ``sampler(draw, targets) -> (canvas, captions)``; ``targets`` are class ids (all -1 for
            retrieval sets and the pool).
    """

    spec: DatasetSpec
    sampler: Sampler


def names(vocab: tuple[str, ...] | list[str], ids: np.ndarray) -> np.ndarray:
    """The strings of ``vocab`` at ``ids`` (an object array, for caption templates)."""
    return np.asarray(vocab, dtype=object)[np.asarray(ids)]


def _pick(rng: np.random.Generator, n: int, k: int, fixed: np.ndarray | None) -> np.ndarray:
    return np.asarray(fixed, dtype=np.int64) if fixed is not None else rng.integers(0, k, n)


def base_factors(d: Draw, n: int, fixed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Shape, colour, size, position and (pool) background ids, uniform and independent unless ``fixed``.

    Every combination occurs, so no factor can be guessed from another (the prototype's model guessed
    shape from colour when pairs were missing). The pool then removes its held-out pairs
    (:func:`pool_colours_`).
    """
    rng = d.rng
    return {
        "shape": _pick(rng, n, len(BASE_SHAPES), fixed.get("shape")),
        "color": _pick(rng, n, len(R.COLOR_NAMES), fixed.get("color")),
        "size": _pick(rng, n, len(SIZES), fixed.get("size")),
        "position": _pick(rng, n, len(POSITIONS), fixed.get("position")),
        "background": _pick(rng, n, len(R.POOL_BACKGROUNDS), fixed.get("background")),
    }


def single_object(
    d: Draw, f: dict[str, np.ndarray], shapes: tuple[str, ...], opacity: np.ndarray | None = None,
    rgb: np.ndarray | None = None,
) -> np.ndarray:
    """Draw one object per image from its factors (jittered position, size and angle) on its background.

    ``opacity`` fades the objects (see :func:`~fif.data.mini.render.draw_shapes`); ``rgb`` (N, 3) replaces
    the palette colour of ``f["color"]``.
    """
    rng, n = d.rng, len(f["shape"])
    canvas = R.backgrounds(f["background"], d.size, rng)
    centres = np.array(list(POSITIONS.values()), dtype=F32)[f["position"]]
    jitter = rng.uniform(-0.04, 0.04, (n, 2)).astype(F32)
    radius = np.array(list(SIZES.values()), dtype=F32)[f["size"]] * rng.uniform(0.92, 1.08, n).astype(F32)
    angle = rng.uniform(-0.25, 0.25, n).astype(F32)
    rgb = R.palette(f["color"], rng) if rgb is None else rgb
    R.draw_shapes(canvas, f["shape"], shapes, centres[:, 0] + jitter[:, 0], centres[:, 1] + jitter[:, 1], radius, angle, rgb,
                  fills=f.get("fill"), opacity=opacity)
    return canvas


def base_fields(f: dict[str, np.ndarray], shapes: tuple[str, ...] = BASE_SHAPES) -> dict[str, np.ndarray]:
    """Caption fields (shape, color, size, position, background names) of single-object factors."""
    return {
        "shape": names(shapes, f["shape"]),
        "color": names(R.COLOR_NAMES, f["color"]),
        "size": names(tuple(SIZES), f["size"]),
        "position": names(tuple(POSITIONS), f["position"]),
        "background": names(R.BACKGROUNDS, f["background"]),
    }


def calm(rng: np.random.Generator, n: int) -> np.ndarray:
    """Background ids of calm kinds (plain, noisy, gradient) for scenes with fine detail."""
    return CALM_BACKGROUNDS[rng.integers(0, len(CALM_BACKGROUNDS), n)]


def glyph_scene(d: Draw, glyphs: np.ndarray, glyph_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One large glyph per image, in a palette colour on a calm background, slightly shifted and rotated.

    Returns:
        (canvas, colour ids, background ids).
    """
    rng, n = d.rng, len(glyph_ids)
    bg = calm(rng, n)
    canvas = R.backgrounds(bg, d.size, rng)
    color = rng.integers(0, len(R.COLOR_NAMES), n)
    centre = 0.5 + rng.uniform(-0.08, 0.08, (n, 2))
    radius = rng.uniform(0.3, 0.4, n).astype(F32)
    angle = rng.uniform(-0.25, 0.25, n).astype(F32)
    G.draw_glyphs(canvas, glyphs, glyph_ids, centre[:, 0].astype(F32), centre[:, 1].astype(F32), radius, angle,
                  R.palette(color, rng))
    return canvas, color, bg
