"""Glyphs for the mini world: handwritten digits, printed characters and seven-segment digits.

Handwritten digits are scikit-learn's bundled 8x8 samples; printed characters come from Pillow's
bundled font; seven-segment digits (a held-out style the pretraining pool never shows) are drawn from
box SDFs like the shapes in :mod:`fif.data.mini.render`. Everything draws batches of images in place.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fif.data.mini.render import F32, box_sdf, composite, coverage, local_coords



@functools.lru_cache(maxsize=1)
def digit_glyphs() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten 8x8 digits as float32 (G, 8, 8) in [0, 1], and labels (G,)."""
    from sklearn.datasets import load_digits  # heavy: only building the mini digits pays for it

    d = load_digits()
    return (d.images / 16.0).astype(F32), d.target.astype(np.int64)


@functools.lru_cache(maxsize=4)
def letter_glyphs(letters: str, size: int = 28) -> np.ndarray:
    """Letters rendered once with Pillow's bundled font, regular and bold.

    Args:
        letters: the characters to render.
        size: glyph bitmap side in pixels.

    Returns:
        float32 (2 * len(letters), size, size) in [0, 1]: ``[2 * i]`` regular, ``[2 * i + 1]`` bold,
        each centred on its bounding box.
    """

    font = ImageFont.load_default(size=int(size * 0.85))
    out = np.zeros((2 * len(letters), size, size), dtype=F32)
    for i, ch in enumerate(letters):
        for bold in (0, 1):
            img = Image.new("L", (size * 2, size * 2), 0)
            draw = ImageDraw.Draw(img)
            draw.text((size // 2, size // 4), ch, fill=255, font=font, stroke_width=bold, stroke_fill=255)
            box = img.getbbox()
            if box is None:
                continue
            crop = img.crop(box)
            w, h = crop.size
            scale = (size - 2) / max(w, h)
            crop = crop.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
            w, h = crop.size
            tile = Image.new("L", (size, size), 0)
            tile.paste(crop, ((size - w) // 2, (size - h) // 2))
            out[2 * i + bold] = np.asarray(tile, dtype=F32) / 255.0
    return out


def draw_glyphs(
    canvas: np.ndarray,
    glyphs: np.ndarray,
    glyph_ids: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    radius: np.ndarray,
    angle: np.ndarray,
    rgb: np.ndarray,
) -> None:
    """Draw one glyph per image (bilinear sampling of the glyph bitmap) onto ``canvas`` in place.

    Args:
        canvas: float32 (N, 3, S, S).
        glyphs: float32 (G, h, w) intensity bitmaps in [0, 1].
        glyph_ids: (N,) which glyph each image shows.
        cx, cy, radius, angle: (N,) geometry; the glyph's square spans ``[-radius, radius]``.
        rgb: (N, 3) ink colours.
    """
    size = canvas.shape[-1]
    g, h, w = glyphs.shape
    padded = np.zeros((g, h + 2, w + 2), dtype=F32)
    padded[:, 1:-1, 1:-1] = glyphs  # a zero border makes out-of-glyph samples transparent
    u, v = local_coords(size, cx, cy, radius, angle)
    gx = np.clip((u + F32(1.0)) * F32(w / 2.0) - F32(0.5) + F32(1.0), 0.0, w + 0.999)
    gy = np.clip((v + F32(1.0)) * F32(h / 2.0) - F32(0.5) + F32(1.0), 0.0, h + 0.999)
    x0, y0 = gx.astype(np.int32), gy.astype(np.int32)
    fx, fy = gx - x0, gy - y0
    gid = np.asarray(glyph_ids, dtype=np.int64).reshape(-1, 1, 1)
    top = padded[gid, y0, x0] * (1 - fx) + padded[gid, y0, x0 + 1] * fx
    bottom = padded[gid, y0 + 1, x0] * (1 - fx) + padded[gid, y0 + 1, x0 + 1] * fx
    alpha = top * (1 - fy) + bottom * fy
    composite(canvas, np.arange(canvas.shape[0]), alpha.astype(F32), rgb)



# ---------------------------------------------------------------------------------------------
# Seven-segment digits (a digital display): each digit lights some of the segments a-g.

# Segment boxes (centre u, centre v, half width, half height) in radius units; the digit spans v in
# [-1, 1] and u in [-0.6, 0.6], and segments are thick enough (0.2 radius) to stay visible at 32 px.
_T = 0.11
_SEGMENTS: dict[str, tuple[float, float, float, float]] = {
    "a": (0.0, -0.89, 0.42, _T),
    "b": (0.49, -0.45, _T, 0.38),
    "c": (0.49, 0.45, _T, 0.38),
    "d": (0.0, 0.89, 0.42, _T),
    "e": (-0.49, 0.45, _T, 0.38),
    "f": (-0.49, -0.45, _T, 0.38),
    "g": (0.0, 0.0, 0.42, _T),
}
SEVEN_SEGMENT_DIGITS: tuple[str, ...] = ("abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg")


def seven_segment_sdf(digit: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (radius units) of a seven-segment ``digit`` (0-9) at local coordinates ``(u, v)``."""
    out = None
    for seg in SEVEN_SEGMENT_DIGITS[digit]:
        cu, cv, hw, hh = _SEGMENTS[seg]
        d = box_sdf(u - F32(cu), v - F32(cv), hw, hh)
        out = d if out is None else np.minimum(out, d)
    return out  # type: ignore[return-value]


def draw_seven_segment(
    canvas: np.ndarray,
    digits: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    radius: np.ndarray,
    slant: np.ndarray,
    rgb: np.ndarray,
) -> None:
    """Draw one seven-segment digit per image onto ``canvas`` in place.

    Args:
        canvas: float32 (N, 3, S, S).
        digits: (N,) digits 0-9.
        cx, cy: (N,) centres; radius: (N,) half the digit's height, as a fraction of the image side.
        slant: (N,) italic shear (u += slant * v), as on many displays.
        rgb: (N, 3) colours.
    """
    size = canvas.shape[-1]
    digits = np.asarray(digits, dtype=np.int64)
    for k in np.unique(digits):
        idx = np.flatnonzero(digits == k)
        u, v = local_coords(size, cx[idx], cy[idx], radius[idx], np.zeros(idx.size, dtype=F32))
        u = u + np.asarray(slant, dtype=F32)[idx].reshape(-1, 1, 1) * v
        composite(canvas, idx, coverage(seven_segment_sdf(int(k), u, v), radius[idx], size), rgb[idx])
