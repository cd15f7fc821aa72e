"""Vectorised numpy drawing for the mini world: shapes, fills, glyphs and backgrounds.

Everything works on batches of images held as float32 arrays ``(N, 3, S, S)`` in [0, 1], so one call
draws thousands of images with a handful of numpy operations (no per-image Python). Geometry lives in
*normalised* coordinates (the image spans [0, 1] on both axes), so the same scene renders at 32 or
64 pixels.

Shapes are signed-distance functions (SDFs) of local object coordinates ``(u, v)`` in units of the
object radius (``u`` right, ``v`` down): negative inside, positive outside. The coverage of a pixel is
``clip(0.5 - distance_in_pixels, 0, 1)``, which gives one pixel of anti-aliasing for free. Several
SDFs are only exact inside the shape; that is enough for a one-pixel edge.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np

F32 = np.float32
SDF = Callable[[np.ndarray, np.ndarray], np.ndarray]

# ---------------------------------------------------------------------------------------------
# Palettes (RGB in [0, 1]). Object colours are saturated and backgrounds are near-neutral, so "the
# colour of the object" is never confused with the colour of the background.

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.12),
    "orange": (0.97, 0.55, 0.07),
    "yellow": (0.95, 0.88, 0.12),
    "green": (0.12, 0.65, 0.22),
    "cyan": (0.08, 0.80, 0.86),
    "blue": (0.14, 0.28, 0.92),
    "purple": (0.56, 0.18, 0.78),
    "pink": (0.99, 0.50, 0.76),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
_PALETTE = np.array(list(COLORS.values()), dtype=F32)


def palette(color_ids: np.ndarray, rng: np.random.Generator, jitter: float = 0.06) -> np.ndarray:
    """RGB colours (N, 3) for colour indices into :data:`COLOR_NAMES`, with per-image jitter.

    Args:
        color_ids: (N,) indices into :data:`COLOR_NAMES`.
        rng: random source for the jitter.
        jitter: half-width of the uniform per-channel jitter.

    Returns:
        float32 (N, 3) in [0, 1].
    """
    rgb = _PALETTE[np.asarray(color_ids)]
    return np.clip(rgb + rng.uniform(-jitter, jitter, rgb.shape).astype(F32), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Coordinates and coverage


@functools.lru_cache(maxsize=8)
def pixel_axes(size: int) -> tuple[np.ndarray, np.ndarray]:
    # Pixel centres in normalised coordinates, shaped to broadcast against (N, S, S).
    t = (np.arange(size, dtype=F32) + F32(0.5)) / F32(size)
    return t.reshape(1, 1, size), t.reshape(1, size, 1)


def local_coords(
    size: int, cx: np.ndarray, cy: np.ndarray, radius: np.ndarray, angle: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Object-local coordinates of every pixel.

    Args:
        size: image side S in pixels.
        cx, cy: (N,) object centres in [0, 1] (x right, y down).
        radius: (N,) object radius as a fraction of the image side.
        angle: (N,) clockwise rotation of the object in radians.

    Returns:
        ``(u, v)``, each float32 (N, S, S), in units of the radius.
    """
    x, y = pixel_axes(size)
    inv = (1.0 / np.asarray(radius, dtype=F32)).reshape(-1, 1, 1)
    dx = (x - np.asarray(cx, dtype=F32).reshape(-1, 1, 1)) * inv
    dy = (y - np.asarray(cy, dtype=F32).reshape(-1, 1, 1)) * inv
    c = np.cos(angle).astype(F32).reshape(-1, 1, 1)
    s = np.sin(angle).astype(F32).reshape(-1, 1, 1)
    return c * dx + s * dy, c * dy - s * dx


def coverage(sd: np.ndarray, radius: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed distance in radius units."""
    px = (np.asarray(radius, dtype=F32) * F32(size)).reshape(-1, 1, 1)
    return np.clip(F32(0.5) - sd * px, 0.0, 1.0)


def composite(canvas: np.ndarray, index: np.ndarray, alpha: np.ndarray, rgb: np.ndarray) -> None:
    """Paint ``rgb`` over ``canvas[index]`` with per-pixel ``alpha`` (in place).

    Args:
        canvas: float32 (N, 3, S, S).
        index: (M,) image indices to paint.
        alpha: (M, S, S) coverage.
        rgb: (M, 3) colours, or (M, 3, S, S) per-pixel colours.
    """
    a = alpha[:, None]
    colour = rgb if rgb.ndim == 4 else rgb[:, :, None, None]
    canvas[index] = canvas[index] * (F32(1.0) - a) + colour * a


# ---------------------------------------------------------------------------------------------
# Signed distance functions


def box_sdf(u: np.ndarray, v: np.ndarray, hw: float, hh: float) -> np.ndarray:
    return np.maximum(np.abs(u) - F32(hw), np.abs(v) - F32(hh))


def _circle(u: np.ndarray, v: np.ndarray, r: float, ou: float = 0.0, ov: float = 0.0) -> np.ndarray:
    return np.hypot(u - F32(ou), v - F32(ov)) - F32(r)


def _ngon(u: np.ndarray, v: np.ndarray, n: int, r: float) -> np.ndarray:
    # Regular n-gon with circumradius r and a vertex pointing up: fold the plane into one sector
    # around the nearest edge's midpoint; the distance to that edge's line is the SDF inside.
    sector = 2.0 * math.pi / n
    phi = np.arctan2(u, -v)
    psi = np.mod(phi, F32(sector)) - F32(sector / 2)
    return np.hypot(u, v) * np.cos(psi) - F32(r * math.cos(math.pi / n))


def _star(u: np.ndarray, v: np.ndarray, points: int = 5, r: float = 1.0, inner: float = 0.45) -> np.ndarray:
    # Fold into the half-sector between a tip (angle 0) and the next inner vertex (angle pi/points);
    # inside that wedge the star is the half-plane behind the edge joining the two.
    half = math.pi / points
    phi = np.arctan2(u, -v)
    psi = np.abs(np.mod(phi + F32(half), F32(2 * half)) - F32(half))
    rho = np.hypot(u, v)
    px, py = rho * np.cos(psi), rho * np.sin(psi)
    tip = np.array([r, 0.0])
    inn = np.array([r * inner * math.cos(half), r * inner * math.sin(half)])
    edge = inn - tip
    normal = np.array([edge[1], -edge[0]]) / np.linalg.norm(edge)
    if normal @ (-tip) > 0:  # make the normal point away from the centre
        normal = -normal
    return F32(normal[0]) * (px - F32(tip[0])) + F32(normal[1]) * (py - F32(tip[1]))


def polygon_sdf(vertices: list[tuple[float, float]]) -> SDF:
    # Convex polygon as the intersection of half-planes (vertices in any consistent order).
    pts = np.asarray(vertices, dtype=np.float64)
    centre = pts.mean(0)
    normals, offsets = [], []
    for a, b in zip(pts, np.roll(pts, -1, axis=0)):
        e = b - a
        n = np.array([e[1], -e[0]]) / np.linalg.norm(e)
        if n @ (centre - a) > 0:
            n = -n
        normals.append(n)
        offsets.append(n @ a)

    def sdf(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        out = None
        for n, c in zip(normals, offsets):
            d = F32(n[0]) * u + F32(n[1]) * v - F32(c)
            out = d if out is None else np.maximum(out, d)
        return out  # type: ignore[return-value]

    return sdf


_heart_tip = polygon_sdf([(-0.86, -0.12), (0.86, -0.12), (0.0, 0.95)])
_arrow_head = polygon_sdf([(0.05, -0.75), (0.05, 0.75), (0.95, 0.0)])
_trapezoid = polygon_sdf([(-0.95, 0.6), (0.95, 0.6), (0.5, -0.6), (-0.5, -0.6)])
_wedge = polygon_sdf([(-0.55, 0.85), (0.55, 0.85), (0.0, -0.95)])


SHAPES: dict[str, SDF] = {
    # base shapes (the pretraining world)
    "circle": lambda u, v: _circle(u, v, 0.9),
    "square": lambda u, v: box_sdf(u, v, 0.8, 0.8),
    "triangle": lambda u, v: _ngon(u, v - F32(0.29), 3, 1.15),
    "diamond": lambda u, v: (np.abs(u) / F32(0.62) + np.abs(v) - F32(1.0)) * F32(0.53),
    "cross": lambda u, v: np.minimum(box_sdf(u, v, 0.3, 0.92), box_sdf(u, v, 0.92, 0.3)),
    "star": lambda u, v: _star(u, v, 5, 1.05, 0.45),
    # novel shapes (adaptation)
    "heart": lambda u, v: np.minimum(
        np.minimum(_circle(u, v, 0.48, -0.43, -0.33), _circle(u, v, 0.48, 0.43, -0.33)), _heart_tip(u, v)
    ),
    "ring": lambda u, v: np.abs(np.hypot(u, v) - F32(0.68)) - F32(0.26),
    "crescent": lambda u, v: np.maximum(_circle(u, v, 0.92), -_circle(u, v, 0.72, 0.45, -0.2)),
    "pentagon": lambda u, v: _ngon(u, v - F32(0.09), 5, 0.98),
    "hexagon": lambda u, v: _ngon(u, v, 6, 0.95),
    "arrow": lambda u, v: np.minimum(box_sdf(u + F32(0.42), v, 0.48, 0.2), _arrow_head(u, v)),
    "semicircle": lambda u, v: np.maximum(_circle(u, v, 0.98, 0.0, 0.4), v - F32(0.4)),
    "trapezoid": _trapezoid,
    # dSprites / orientation shapes
    "ellipse": lambda u, v: (np.hypot(u, v / F32(0.55)) - F32(1.0)) * F32(0.55),
    "wedge": _wedge,
}


def shape_sdf(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (radius units) of shape ``name`` at local coordinates ``(u, v)``.

    Raises:
        KeyError: for an unknown shape, listing the known ones.
    """
    if name not in SHAPES:
        raise KeyError(f"unknown mini-world shape {name!r}; known: {', '.join(SHAPES)}")
    return SHAPES[name](u, v)


# ---------------------------------------------------------------------------------------------
# Fills: how the inside of a shape is painted

# Fill names are deliberately not the background words ("striped", "checkered", "gradient"), so the base
# model has no head start on them.
FILLS: tuple[str, ...] = ("solid", "outlined", "hatched", "dotted", "tiled", "two-tone", "shaded")


def fill_pattern(kind: str, u: np.ndarray, v: np.ndarray, sd: np.ndarray, px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel (alpha multiplier, brightness multiplier) of a fill inside a shape.

    Args:
        kind: one of :data:`FILLS`.
        u, v: local coordinates (M, S, S).
        sd: the shape's signed distance (M, S, S).
        px: (M, 1, 1) radius in pixels (to keep outlines about two pixels wide at any size).

    Returns:
        ``(alpha_mul, shade)``: multiply the coverage by the first and the colour by the second.

    Raises:
        KeyError: for an unknown fill.
    """
    one = np.ones_like(u)
    if kind == "solid":
        return one, one
    if kind == "outlined":
        width = np.maximum(F32(2.0) / px, F32(0.22))
        inner = np.clip(F32(0.5) - (sd + width) * px, 0.0, 1.0)
        return F32(1.0) - inner, one
    if kind == "hatched":
        return one, np.where(np.sin(u * F32(7.0)) > 0, F32(1.0), F32(0.25))
    if kind == "dotted":
        fu, fv = np.mod(u * F32(1.8), F32(1.0)) - F32(0.5), np.mod(v * F32(1.8), F32(1.0)) - F32(0.5)
        return one, np.where(np.hypot(fu, fv) < F32(0.28), F32(0.2), F32(1.0))
    if kind == "tiled":
        cells = (np.floor(u * F32(2.2)) + np.floor(v * F32(2.2))).astype(np.int32) & 1
        return one, np.where(cells == 1, F32(1.0), F32(0.25))
    if kind == "two-tone":
        return one, np.where(u < 0, F32(1.0), F32(0.3))
    if kind == "shaded":
        return one, np.clip(F32(0.6) - F32(0.55) * v, 0.15, 1.0)
    raise KeyError(f"unknown fill {kind!r}; known: {', '.join(FILLS)}")


def draw_shapes(
    canvas: np.ndarray,
    shapes: np.ndarray,
    names: tuple[str, ...],
    cx: np.ndarray,
    cy: np.ndarray,
    radius: np.ndarray,
    angle: np.ndarray,
    rgb: np.ndarray,
    fills: np.ndarray | None = None,
    fill_names: tuple[str, ...] = FILLS,
    active: np.ndarray | None = None,
    opacity: np.ndarray | None = None,
) -> None:
    """Draw one object per image onto ``canvas`` (in place), grouping images by shape and fill.

    Args:
        canvas: float32 (N, 3, S, S).
        shapes: (N,) indices into ``names``.
        names: shape names (keys of :data:`SHAPES`).
        cx, cy, radius, angle: (N,) geometry (see :func:`local_coords`).
        rgb: (N, 3) colours.
        fills: optional (N,) indices into ``fill_names``; None = solid.
        fill_names: names of the fills (entries of :data:`FILLS`).
        active: optional (N,) bool; images where it is False are left untouched.
        opacity: optional (N,) in [0, 1]: the object is blended over the background this much (faded
            objects, a held-out style); None = opaque.
    """
    size = canvas.shape[-1]
    n = canvas.shape[0]
    fills = np.zeros(n, dtype=np.int64) if fills is None else np.asarray(fills)
    keys = np.asarray(shapes, dtype=np.int64) * 64 + fills
    mask = np.ones(n, dtype=bool) if active is None else np.asarray(active, dtype=bool)
    for key in np.unique(keys[mask]):
        idx = np.flatnonzero((keys == key) & mask)
        shape_name, fill_name = names[key // 64], fill_names[key % 64]
        u, v = local_coords(size, cx[idx], cy[idx], radius[idx], angle[idx])
        sd = shape_sdf(shape_name, u, v)
        alpha = coverage(sd, radius[idx], size)
        colour = rgb[idx]
        if fill_name != "solid":
            px = (np.asarray(radius[idx], dtype=F32) * F32(size)).reshape(-1, 1, 1)
            alpha_mul, shade = fill_pattern(fill_name, u, v, sd, px)
            alpha = alpha * alpha_mul
            colour = colour[:, :, None, None] * shade[:, None]
        if opacity is not None:
            alpha = alpha * np.asarray(opacity, dtype=F32)[idx].reshape(-1, 1, 1)
        composite(canvas, idx, alpha, colour)


# ---------------------------------------------------------------------------------------------
# Backgrounds

BACKGROUNDS: tuple[str, ...] = ("plain", "noisy", "striped", "checkered", "gradient", "cluttered")
# The pretraining pool's backgrounds; "cluttered" (a plain tone strewn with small specks of every palette
# colour) is held out for evaluation-only sets, a distribution shift the base model never trained on.
POOL_BACKGROUNDS: tuple[str, ...] = BACKGROUNDS[:5]
CLUTTER_SPECKS = 18


def _tones(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Two near-neutral tones per image: one dark or light base, and a second one 0.15-0.3 away, so
    # textures stay visible without drowning a small object.
    light = rng.random(n) < 0.5
    base = np.where(light, rng.uniform(0.62, 0.92, n), rng.uniform(0.05, 0.32, n)).astype(F32)
    delta = rng.uniform(0.15, 0.3, n).astype(F32) * np.where(light, -1, 1).astype(F32)
    tint = rng.uniform(-0.04, 0.04, (n, 3)).astype(F32)
    t1 = np.clip(base[:, None] + tint, 0, 1)
    t2 = np.clip((base + delta)[:, None] + tint, 0, 1)
    return t1, t2


def backgrounds(kinds: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Background images for each image's kind.

    Args:
        kinds: (N,) indices into :data:`BACKGROUNDS`.
        size: image side S in pixels.
        rng: random source (tones, noise, stripe angles and periods).

    Returns:
        float32 (N, 3, S, S) in [0, 1].
    """
    kinds = np.asarray(kinds, dtype=np.int64)
    n = kinds.shape[0]
    t1, t2 = _tones(n, rng)
    x, y = pixel_axes(size)
    theta = rng.uniform(0, math.pi, n).astype(F32).reshape(-1, 1, 1)
    period = (rng.uniform(4.0, 8.0, n) / size).astype(F32).reshape(-1, 1, 1)  # 4-8 pixels at any S
    noise = rng.standard_normal((n, size, size)).astype(F32)
    proj = x * np.cos(theta) + y * np.sin(theta)
    k = kinds.reshape(-1, 1, 1)
    mix = np.zeros((n, size, size), dtype=F32)
    mix = np.where(k == 1, np.clip(F32(0.5) + F32(0.35) * noise, 0, 1), mix)
    mix = np.where(k == 2, (np.sin(F32(2 * math.pi) * proj / period) > 0).astype(F32), mix)
    cells = (np.floor(x / period) + np.floor(y / period)).astype(np.int32) & 1
    mix = np.where(k == 3, cells.astype(F32), mix)
    # gradients run from one tone to the other across the whole image, so they read as "gradient"
    centre = F32(0.5) * (np.cos(theta) + np.sin(theta))
    mix = np.where(k == 4, np.clip(F32(0.5) + (proj - centre) * F32(1.3), 0, 1), mix)
    m = mix[:, None]
    out = (t1[:, :, None, None] * (F32(1.0) - m) + t2[:, :, None, None] * m).astype(F32)
    cluttered = np.flatnonzero(kinds == BACKGROUNDS.index("cluttered"))
    if cluttered.size:
        _specks(out, cluttered, rng)
    return out


def _specks(canvas: np.ndarray, index: np.ndarray, rng: np.random.Generator) -> None:
    # Small dots (0.8-1.6 px radius at any size) of random palette colours, scattered over the image.
    size, n = canvas.shape[-1], index.size
    sub = canvas[index]
    for _ in range(CLUTTER_SPECKS):
        cx, cy = rng.random(n).astype(F32), rng.random(n).astype(F32)
        radius = (rng.uniform(0.8, 1.6, n) / size).astype(F32)
        u, v = local_coords(size, cx, cy, radius, np.zeros(n, dtype=F32))
        alpha = coverage(np.hypot(u, v) - F32(1.0), radius, size)
        composite(sub, np.arange(n), alpha, palette(rng.integers(0, len(COLOR_NAMES), n), rng))
    canvas[index] = sub


def blur(canvas: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Gaussian blur of each image (a defocused, low-quality photo: a held-out style).

    Args:
        canvas: float32 (N, 3, S, S).
        sigma: (N,) standard deviation as a fraction of the image side.

    Returns:
        The blurred images (float32, same shape); edges are padded by repetition.
    """
    size = canvas.shape[-1]
    sigma_px = np.maximum(np.asarray(sigma, dtype=F32) * F32(size), F32(1e-3)).reshape(-1, 1, 1, 1)
    reach = int(np.ceil(3 * sigma_px.max()))
    taps = np.arange(-reach, reach + 1, dtype=F32)
    weights = np.exp(-0.5 * (taps.reshape(1, -1, 1, 1) / sigma_px.reshape(-1, 1, 1, 1)) ** 2)  # (N, K, 1, 1)
    weights /= weights.sum(axis=1, keepdims=True)
    out = canvas
    for axis in (2, 3):  # separable: rows, then columns
        padded = np.pad(out, [(0, 0), (0, 0)] + [(reach, reach) if a == axis else (0, 0) for a in (2, 3)], mode="edge")
        acc = np.zeros_like(out)
        for k in range(taps.size):
            window = padded[:, :, k : k + size, :] if axis == 2 else padded[:, :, :, k : k + size]
            acc += weights[:, k].reshape(-1, 1, 1, 1) * window
        out = acc
    return out.astype(F32)


def to_uint8(canvas: np.ndarray) -> np.ndarray:
    """float [0, 1] (N, 3, S, S) → uint8, rounding to nearest."""
    return (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
