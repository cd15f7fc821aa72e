"""The adaptation sets: subdomains with concepts the base model does not know, or only coarsely.

Each is a new subdomain for the stream to teach (novel shapes, fills, counting, handwritten digits,
letters, dSprites- and Shapes3D-like scenes, spatial relations, colour shades, two-object scenes). Most
use words the pool never contains, so the base model is near chance on them; three overlap the pool on
purpose, as coarse versions of a domain (``world.ON_PURPOSE_OVERLAPS``): handwritten digits (the pool
prints digits), dSprites' quadrants (the pool's positions and its square) and shades of the pool's colours.
"""

from __future__ import annotations

import math

import numpy as np

from fif.data.mini import captions as C
from fif.data.mini import glyphs as G
from fif.data.mini import render as R
from fif.data.mini import solids as S
from fif.data.mini.factors import (
    BASE_SHAPES,
    COUNTS,
    DIGITS,
    F32,
    FILL_CLASSES,
    NOVEL_SHAPES,
    QUADRANTS,
    RELATIONS,
    SHADE_HUES,
    SHADES,
    SPRITES,
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


def novel_shapes(d: Draw, targets: np.ndarray) -> Sample:
    """Eight shapes the pool never shows, in the pool's colours, sizes, positions and backgrounds."""
    f = base_factors(d, len(targets), {"shape": targets})
    canvas = single_object(d, f, NOVEL_SHAPES)
    return canvas, C.caption_lists(d.rng, base_fields(f, NOVEL_SHAPES), C.NOVEL_SHAPES, 3)


def fills(d: Draw, targets: np.ndarray) -> Sample:
    """Base shapes painted with six fill patterns (medium and large only, so the fill is visible)."""
    rng, n = d.rng, len(targets)
    f = base_factors(d, n, {})
    f["size"] = rng.integers(1, 3, n)
    f["background"] = calm(rng, n)
    f["fill"] = np.asarray(targets) + 1  # R.FILLS[0] is solid
    canvas = single_object(d, f, BASE_SHAPES)
    fields = base_fields(f)
    fields["fill"] = names(FILL_CLASSES, targets)
    return canvas, C.caption_lists(rng, fields, C.FILLS, 3)


def counting(d: Draw, targets: np.ndarray) -> Sample:
    """One to six small copies of a shape on a jittered 4×4 grid (cells never overlap)."""
    rng, n = d.rng, len(targets)
    count = np.asarray(targets) + 1
    shape = rng.integers(0, len(BASE_SHAPES), n)
    color = rng.integers(0, len(R.COLOR_NAMES), n)
    bg = calm(rng, n)
    canvas = R.backgrounds(bg, d.size, rng)
    cells = np.argsort(rng.random((n, 16)), axis=1)[:, : len(COUNTS)]
    rgb = R.palette(color, rng)
    for slot in range(len(COUNTS)):
        cx = (cells[:, slot] % 4 + 0.5) / 4 + rng.uniform(-0.03, 0.03, n)
        cy = (cells[:, slot] // 4 + 0.5) / 4 + rng.uniform(-0.03, 0.03, n)
        radius = rng.uniform(0.075, 0.095, n).astype(F32)
        angle = rng.uniform(-0.25, 0.25, n).astype(F32)
        R.draw_shapes(canvas, shape, BASE_SHAPES, cx.astype(F32), cy.astype(F32), radius, angle, rgb, active=count > slot)
    shapes = np.where(count == 1, names(BASE_SHAPES, shape), names(tuple(C.plural(s) for s in BASE_SHAPES), shape))
    fields = {
        "count": names(COUNTS, targets),
        "color": names(R.COLOR_NAMES, color),
        "shapes": shapes,
        "background": names(R.BACKGROUNDS, bg),
    }
    return canvas, C.caption_lists(rng, fields, C.COUNTING, 3)


def digit_split(split: str) -> dict[int, np.ndarray]:
    """Which of scikit-learn's digit glyphs each split draws from, per class.

    The first 70% of each class's glyphs (in file order) are ``train``, the rest every other split,
    so no handwritten sample is seen in training and again at test time.

    Returns:
        class id → glyph indices into :func:`~fif.data.mini.render.digit_glyphs`.
    """
    _, labels = G.digit_glyphs()
    out = {}
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        cut = int(round(0.7 * len(idx)))
        out[c] = idx[:cut] if split == "train" else idx[cut:]
    return out


def digits(d: Draw, targets: np.ndarray) -> Sample:
    """Handwritten digits (scikit-learn's 8×8 glyphs, upsampled), in colour on calm backgrounds."""
    glyphs, _ = G.digit_glyphs()
    pools = digit_split(d.split)
    targets = np.asarray(targets)
    ids = np.zeros(len(targets), dtype=np.int64)
    pick = d.rng.random(len(targets))
    for c, pool in pools.items():
        rows = np.flatnonzero(targets == c)
        ids[rows] = pool[(pick[rows] * len(pool)).astype(np.int64)]
    canvas, color, bg = glyph_scene(d, glyphs, ids)
    fields = {"digit": names(DIGITS, targets), "color": names(R.COLOR_NAMES, color), "background": names(R.BACKGROUNDS, bg)}
    return canvas, C.caption_lists(d.rng, fields, C.DIGITS, 3)


def letters(alphabet: str) -> Sampler:
    """Sampler of capital letters from Pillow's bundled font, regular or bold, in colour."""

    def sample(d: Draw, targets: np.ndarray) -> Sample:
        glyphs = G.letter_glyphs(alphabet)
        bold = d.rng.integers(0, 2, len(targets))
        canvas, color, bg = glyph_scene(d, glyphs, 2 * np.asarray(targets) + bold)
        fields = {
            "letter": names(tuple(alphabet), targets),
            "weight": names(("regular", "bold"), bold),
            "color": names(R.COLOR_NAMES, color),
            "background": names(R.BACKGROUNDS, bg),
        }
        return canvas, C.caption_lists(d.rng, fields, C.LETTERS, 3)

    return sample


def dsprites(d: Draw, targets: np.ndarray) -> Sample:
    """dSprites-like: a white square, ellipse or heart on black, any rotation, in one quadrant."""
    rng, n = d.rng, len(targets)
    targets = np.asarray(targets)
    shape, quadrant = targets // len(QUADRANTS), targets % len(QUADRANTS)
    canvas = np.broadcast_to(rng.uniform(0.0, 0.04, (n, 1, 1, 1)).astype(F32), (n, 3, d.size, d.size)).copy()
    cx = np.where(quadrant % 2 == 0, 0.28, 0.72) + rng.uniform(-0.07, 0.07, n)
    cy = np.where(quadrant < 2, 0.28, 0.72) + rng.uniform(-0.07, 0.07, n)
    radius = rng.uniform(0.11, 0.19, n).astype(F32)
    angle = rng.uniform(0, 2 * math.pi, n).astype(F32)
    white = np.clip(rng.uniform(0.92, 1.0, (n, 1)), 0, 1).astype(F32).repeat(3, axis=1)
    R.draw_shapes(canvas, shape, SPRITES, cx.astype(F32), cy.astype(F32), radius, angle, white)
    fields = {
        "shape": names(SPRITES, shape),
        "quadrant": names(QUADRANTS, quadrant),
        "degrees": np.char.mod("%d", np.round(np.degrees(angle)).astype(int)),
        "scale": names(("small", "medium", "large"), np.digitize(radius, [0.137, 0.163])),
    }
    return canvas, C.caption_lists(rng, fields, C.DSPRITES, 3)


def shapes3d(d: Draw, targets: np.ndarray) -> Sample:
    """Shapes3D-like rooms: a shaded cube, cylinder, sphere or capsule on a floor before a wall."""
    rng, n = d.rng, len(targets)
    colours = np.argsort(rng.random((n, len(R.COLOR_NAMES))), axis=1)[:, :3]  # object, floor, wall differ
    horizon = rng.uniform(0.48, 0.6, n).astype(F32)
    canvas = S.room(R.palette(colours[:, 2], rng), R.palette(colours[:, 1], rng), horizon, d.size)
    radius = rng.uniform(0.17, 0.23, n).astype(F32)
    bottom = np.minimum(horizon + rng.uniform(0.15, 0.3, n).astype(F32), F32(0.95))
    cx = rng.uniform(0.35, 0.65, n).astype(F32)
    S.draw_solids(canvas, targets, cx, bottom - radius, radius, R.palette(colours[:, 0], rng))
    fields = {
        "solid": names(S.SOLIDS, targets),
        "color": names(R.COLOR_NAMES, colours[:, 0]),
        "floor": names(R.COLOR_NAMES, colours[:, 1]),
        "wall": names(R.COLOR_NAMES, colours[:, 2]),
    }
    return canvas, C.caption_lists(rng, fields, C.SHAPES3D, 3)


def relations(d: Draw, targets: np.ndarray) -> Sample:
    """A red and a blue shape; the class says where the red one is: above, below, beside or inside the blue one."""
    rng, n = d.rng, len(targets)
    targets = np.asarray(targets)
    beside = np.where(rng.random(n) < 0.5, -1.0, 1.0)  # either side: "beside" names no side (see captions.SCENES)
    direction = np.stack([np.where(targets == 2, beside, 0.0), np.select([targets == 0, targets == 1], [-1.0, 1.0], 0.0)], axis=1)
    gap = rng.uniform(0.32, 0.48, (n, 1))
    side = np.stack([-direction[:, 1], direction[:, 0]], axis=1) * rng.uniform(-0.08, 0.08, (n, 1))
    mid = 0.5 + rng.uniform(-0.07, 0.07, (n, 2))
    red, blue = mid + direction * gap / 2 + side / 2, mid - direction * gap / 2 - side / 2
    inside = targets == RELATIONS.index("inside")
    small = rng.uniform(0.1, 0.14, (2, n))
    radius = {"red": np.where(inside, rng.uniform(0.07, 0.09, n), small[0]), "blue": np.where(inside, rng.uniform(0.28, 0.32, n), small[1])}
    shapes = rng.integers(0, len(BASE_SHAPES), (n, 2))
    canvas = R.backgrounds(calm(rng, n), d.size, rng)
    for k, (pos, colour, name) in ((1, (blue, 5, "blue")), (0, (red, 0, "red"))):  # blue first: red sits inside it
        angle = np.where(inside, 0.0, rng.uniform(-0.25, 0.25, n)).astype(F32)  # upright, so red stays inside
        rgb = R.palette(np.full(n, colour), rng)
        R.draw_shapes(canvas, shapes[:, k], BASE_SHAPES, pos[:, 0].astype(F32), pos[:, 1].astype(F32),
                      radius[name].astype(F32), angle, rgb)
    fields = {
        "relation": names(RELATIONS, targets),
        "shape_a": names(BASE_SHAPES, shapes[:, 0]),
        "shape_b": names(BASE_SHAPES, shapes[:, 1]),
    }
    return canvas, C.caption_lists(rng, fields, C.RELATIONS, 3)


def shades(d: Draw, targets: np.ndarray) -> Sample:
    """Base shapes in light or dark shades of four pool colours (the pool knows the colour, not the shade)."""
    rng, n = d.rng, len(targets)
    targets = np.asarray(targets)
    f = base_factors(d, n, {})
    f["size"] = rng.integers(1, 3, n)  # medium and large, so the colour is clear
    f["background"] = calm(rng, n)
    f["color"] = np.array([R.COLOR_NAMES.index(h) for h in SHADE_HUES])[targets % len(SHADE_HUES)]
    base = R.palette(f["color"], rng)
    dark = (targets >= len(SHADE_HUES))[:, None]
    rgb = np.where(dark, base * rng.uniform(0.35, 0.5, (n, 1)), base + (1 - base) * rng.uniform(0.45, 0.6, (n, 1)))
    canvas = single_object(d, f, BASE_SHAPES, rgb=rgb.astype(F32))
    fields = {**base_fields(f), "shade": names(SHADES, targets)}
    return canvas, C.caption_lists(rng, fields, C.SHADES, 3)


def scenes(d: Draw, targets: np.ndarray) -> Sample:
    """Two novel shapes side by side in two colours, for image–caption retrieval."""
    rng, n = d.rng, len(targets)
    vocab = NOVEL_SHAPES
    shapes = rng.integers(0, len(vocab), (n, 2))
    colours = np.argsort(rng.random((n, len(R.COLOR_NAMES))), axis=1)[:, :2]
    bg = rng.integers(0, len(R.POOL_BACKGROUNDS), n)
    canvas = R.backgrounds(bg, d.size, rng)
    for k, x in enumerate((0.27, 0.73)):
        cx = (x + rng.uniform(-0.04, 0.04, n)).astype(F32)
        cy = (0.5 + rng.uniform(-0.15, 0.15, n)).astype(F32)
        radius = rng.uniform(0.15, 0.2, n).astype(F32)
        angle = rng.uniform(-0.25, 0.25, n).astype(F32)
        R.draw_shapes(canvas, shapes[:, k], vocab, cx, cy, radius, angle, R.palette(colours[:, k], rng))
    fields = {
        "shape_a": names(vocab, shapes[:, 0]),
        "shape_b": names(vocab, shapes[:, 1]),
        "color_a": names(R.COLOR_NAMES, colours[:, 0]),
        "color_b": names(R.COLOR_NAMES, colours[:, 1]),
        "background": names(R.BACKGROUNDS, bg),
    }
    return canvas, C.caption_lists(rng, fields, C.SCENES, 3)


