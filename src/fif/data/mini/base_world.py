"""The pretraining world (the pool the base model learns from) and the evaluation-only sets.

The pool shows single base objects (6 shapes x 8 colours x 3 sizes x 5 positions on 5 kinds of
background, 12 colour-shape pairs held out) and a minority of printed digits and lower-case letters. Every evaluation-only set
reads concepts the base model learned from the pool, but under a shift the pool never shows, as FiF's
evaluation-only sets (ImageNet-R/-S, SVHN, ...) are not in its pretraining pool: faded objects, held-out
colour-shape pairs, blur, clutter, two objects at once, seven-segment digits.
So pool replay during a stream is replay of related data, not training on the test distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fif.data.mini import captions as C
from fif.data.mini import glyphs as G
from fif.data.mini import render as R
from fif.data.mini.factors import (
    BASE_SHAPES,
    DIGITS,
    F32,
    HELD_OUT_COLOURS,
    LOWER_CASE,
    POOL_COLOURS,
    POSITIONS,
    QUADRANTS,
    SIZES,
    Draw,
    Sample,
    Sampler,
    base_factors,
    base_fields,
    calm,
    glyph_scene,
    names,
    single_object,
)

CLUTTERED = R.BACKGROUNDS.index("cluttered")


@dataclass(frozen=True)
class CaptionMix:
    """How many captions of each kind a pool object image gets (training draws one uniformly).

    See :mod:`fif.data.mini.captions` for why most are not full-attribute.

    Attributes:
        full: full-attribute phrasings (the first is canonical).
        pairs: shape + one other attribute (``captions.POOL_PAIRS``).
        shape: the shape alone (``captions.POOL_SHAPE``).
        singles: one other attribute alone (``captions.POOL_SINGLES``).
    """

    full: int = 4
    pairs: int = 0
    shape: int = 1
    singles: int = 1

    def __post_init__(self) -> None:
        if self.full < 1 or min(self.pairs, self.shape, self.singles) < 0:
            raise ValueError(f"caption mix {self}: need full >= 1 and pairs, shape, singles >= 0")


@dataclass(frozen=True)
class Studio:
    """Fractions of the pool's object images drawn as "studio shots", where only colour and one other factor vary.

    Why: contrastive learning takes the easy features first (colour, then position and size) and
    then has little reason to learn a harder one ("feature suppression"); in uniformly drawn images
    the other factors already tell a batch's images apart. In a studio shot the nuisance factors sit
    at fixed values, so a batch holds several studio shots of the same colour whose (full, truthful)
    captions differ only in the studied factor: hard negatives that make the loss learn it, with no
    false negatives. Measured in world v1: shape zero-shot 0.47 → 0.78 after 900 steps with 40% shape studio.

    Attributes:
        shape: share of shape shots (centre, plain background; any shape and size).
        position: share of position shots (medium circle on plain; any position).
        size: share of size shots (square in the centre on plain; any size).
    """

    shape: float = 0.45
    position: float = 0.1
    size: float = 0.12

    def __post_init__(self) -> None:
        shares = (self.shape, self.position, self.size)
        if min(shares) < 0 or sum(shares) > 1:
            raise ValueError(f"studio shares {self} must be >= 0 and sum to at most 1")


def _studio(rng: np.random.Generator, f: dict[str, np.ndarray], studio: Studio) -> None:
    # Overwrite the nuisance factors of the studio shots in place (colour stays free).
    u = rng.random(len(f["shape"]))
    medium, centre = tuple(SIZES).index("medium"), tuple(POSITIONS).index("center")
    plain = R.BACKGROUNDS.index("plain")
    cuts = np.cumsum([studio.shape, studio.position, studio.size])
    shape_shot, position_shot, size_shot = u < cuts[0], (u >= cuts[0]) & (u < cuts[1]), (u >= cuts[1]) & (u < cuts[2])
    f["background"][u < cuts[2]] = plain
    f["size"][position_shot] = medium
    f["position"][shape_shot | size_shot] = centre
    f["shape"][position_shot] = BASE_SHAPES.index("circle")
    f["shape"][size_shot] = BASE_SHAPES.index("square")


def _pool_objects(d: Draw, n: int, mix: CaptionMix, studio: Studio) -> Sample:
    f = base_factors(d, n, {})
    _studio(d.rng, f, studio)
    # Colour last, from the shape's pool colours: the held-out pairs never occur (mini_shapes shows them).
    f["color"] = POOL_COLOURS[f["shape"], d.rng.integers(0, POOL_COLOURS.shape[1], n)]
    canvas = single_object(d, f, BASE_SHAPES)
    groups = ((C.POOL_PAIRS, mix.pairs), (C.POOL_SHAPE, mix.shape), (C.POOL_SINGLES, mix.singles))
    return canvas, C.caption_lists(d.rng, base_fields(f), C.POOL_FULL, mix.full, groups)


def printed_digits(d: Draw, digits: np.ndarray) -> Sample:
    """Digits 0-9 printed in Pillow's bundled font (regular weight), in colour on calm backgrounds."""
    glyphs = G.letter_glyphs("".join(DIGITS))
    canvas, color, _ = glyph_scene(d, glyphs, 2 * np.asarray(digits))
    fields = {"digit": names(DIGITS, digits), "color": names(R.COLOR_NAMES, color)}
    return canvas, C.caption_lists(d.rng, fields, C.POOL_DIGITS, len(C.POOL_DIGITS))


def printed_letters(d: Draw, letters: np.ndarray) -> Sample:
    """Lower-case letters a-z printed in Pillow's bundled font (regular weight), in colour on calm backgrounds."""
    glyphs = G.letter_glyphs(LOWER_CASE)
    canvas, color, _ = glyph_scene(d, glyphs, 2 * np.asarray(letters))
    fields = {"letter": names(tuple(LOWER_CASE), letters), "color": names(R.COLOR_NAMES, color)}
    return canvas, C.caption_lists(d.rng, fields, C.POOL_LETTERS, len(C.POOL_LETTERS))


def pool(mix: CaptionMix = CaptionMix(), studio: Studio = Studio(), digits: float = 0.12, letters: float = 0.06) -> Sampler:
    """Sampler of the pretraining pool: single base objects, a ``digits`` share of printed digits and a
    ``letters`` share of printed lower-case letters.

    Args:
        mix: captions per object image of each kind.
        studio: shares of the object images drawn as studio shots (see :class:`Studio`).
        digits: share of printed digits (the coarse version of the handwritten-digits domain).
        letters: share of printed lower-case letters (the coarse version of ``mini_letters``' capitals).
            With 0 the pool is world v3's, byte for byte.

    Returns:
        The sampler (targets ignored).
    """

    def sample(d: Draw, targets: np.ndarray) -> Sample:
        n = len(targets)
        u = d.rng.random(n)
        is_digit, is_letter = u < digits, (u >= digits) & (u < digits + letters)
        canvas = np.empty((n, 3, d.size, d.size), dtype=F32)
        caps: list[list[str]] = [[] for _ in range(n)]
        parts = ((np.flatnonzero(~is_digit & ~is_letter), "objects"), (np.flatnonzero(is_digit), "digits"),
                 (np.flatnonzero(is_letter), "letters"))
        for rows, part in parts:
            if not rows.size:
                continue
            if part == "objects":
                images, texts = _pool_objects(d, rows.size, mix, studio)
            elif part == "digits":
                images, texts = printed_digits(d, d.rng.integers(0, len(DIGITS), rows.size))
            else:
                images, texts = printed_letters(d, d.rng.integers(0, len(LOWER_CASE), rows.size))
            canvas[rows] = images
            for r, t in zip(rows.tolist(), texts):
                caps[r] = t
        return canvas, caps

    return sample


# ---------------------------------------------------------------------------------------------
# Evaluation-only sets: one base concept each, under a shift the pool never shows


def faded_colors(d: Draw, targets: np.ndarray) -> Sample:
    """Colour of a faded base object (blended 30-55 % over its background; the pool's are opaque)."""
    n = len(targets)
    f = base_factors(d, n, {"color": targets})
    canvas = single_object(d, f, BASE_SHAPES, opacity=d.rng.uniform(0.3, 0.55, n).astype(F32))
    return canvas, C.caption_lists(d.rng, base_fields(f), C.FADED, 3)


def held_out_shapes(d: Draw, targets: np.ndarray) -> Sample:
    """Shape of a base object in a colour the pool never gives that shape (a held-out colour-shape pair)."""
    n = len(targets)
    f = base_factors(d, n, {"shape": targets})
    f["color"] = HELD_OUT_COLOURS[np.asarray(targets), d.rng.integers(0, HELD_OUT_COLOURS.shape[1], n)]
    canvas = single_object(d, f, BASE_SHAPES)
    return canvas, C.caption_lists(d.rng, base_fields(f), C.POOL_FULL, 3)


def blurred_sizes(d: Draw, targets: np.ndarray) -> Sample:
    """Size of a base object in a blurred image (Gaussian, 1.6-2.6 px at 32 px; the pool's are sharp)."""
    n = len(targets)
    f = base_factors(d, n, {"size": targets})
    canvas = R.blur(single_object(d, f, BASE_SHAPES), d.rng.uniform(0.05, 0.08, n))
    return canvas, C.caption_lists(d.rng, base_fields(f), C.BLURRED, 3)


def cluttered_positions(d: Draw, targets: np.ndarray) -> Sample:
    """Position of a base object on the cluttered background (specks of every colour around it)."""
    n = len(targets)
    f = base_factors(d, n, {"position": targets})
    f["background"][:] = CLUTTERED
    canvas = single_object(d, f, BASE_SHAPES)
    return canvas, C.caption_lists(d.rng, base_fields(f), C.CLUTTERED, 3)


def pair_scenes(d: Draw, targets: np.ndarray) -> Sample:
    """Two base objects in two different corners (the pool shows one object at a time), for retrieval."""
    rng, n = d.rng, len(targets)
    corners = np.argsort(rng.random((n, len(QUADRANTS))), axis=1)[:, :2]  # two distinct corners
    position_ids = np.array([tuple(POSITIONS).index(q) for q in QUADRANTS])[corners]
    canvas = R.backgrounds(rng.integers(0, len(R.POOL_BACKGROUNDS), n), d.size, rng)
    fields: dict[str, np.ndarray] = {}
    for k, tag in enumerate("ab"):
        f = {"shape": rng.integers(0, len(BASE_SHAPES), n), "color": rng.integers(0, len(R.COLOR_NAMES), n),
             "size": rng.integers(0, 2, n), "position": position_ids[:, k]}  # small or medium: corners never overlap
        centres = np.array(list(POSITIONS.values()), dtype=F32)[f["position"]] + rng.uniform(-0.03, 0.03, (n, 2)).astype(F32)
        radius = np.array(list(SIZES.values()), dtype=F32)[f["size"]] * rng.uniform(0.92, 1.08, n).astype(F32)
        R.draw_shapes(canvas, f["shape"], BASE_SHAPES, centres[:, 0], centres[:, 1], radius,
                      rng.uniform(-0.25, 0.25, n).astype(F32), R.palette(f["color"], rng))
        fields.update({
            f"shape_{tag}": names(BASE_SHAPES, f["shape"]), f"color_{tag}": names(R.COLOR_NAMES, f["color"]),
            f"size_{tag}": names(tuple(SIZES), f["size"]), f"position_{tag}": names(tuple(POSITIONS), f["position"]),
        })
    return canvas, C.caption_lists(rng, fields, C.PAIR_SCENES, len(C.PAIR_SCENES))


def seven_segment_numbers(d: Draw, targets: np.ndarray) -> Sample:
    """Digits as on a seven-segment display (the pool prints them in a font), in colour, slanted."""
    rng, n = d.rng, len(targets)
    canvas = R.backgrounds(calm(rng, n), d.size, rng)
    color = rng.integers(0, len(R.COLOR_NAMES), n)
    centre = 0.5 + rng.uniform(-0.06, 0.06, (n, 2)).astype(F32)
    G.draw_seven_segment(canvas, np.asarray(targets), centre[:, 0], centre[:, 1], rng.uniform(0.3, 0.38, n).astype(F32),
                         rng.uniform(-0.1, 0.25, n).astype(F32), R.palette(color, rng))
    fields = {"digit": names(DIGITS, targets), "color": names(R.COLOR_NAMES, color)}
    return canvas, C.caption_lists(rng, fields, C.SEVEN_SEGMENT, len(C.SEVEN_SEGMENT))
