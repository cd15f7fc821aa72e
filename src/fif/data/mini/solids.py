"""Shaded solids in Shapes3D-like rooms: each solid is a few (SDF, shade) layers painted back to front."""

from __future__ import annotations

import numpy as np

from fif.data.mini.render import F32, pixel_axes, box_sdf, polygon_sdf, composite, coverage, local_coords


_cube_front = polygon_sdf([(-1.0, -0.55), (0.55, -0.55), (0.55, 1.0), (-1.0, 1.0)])
_cube_top = polygon_sdf([(-1.0, -0.55), (0.55, -0.55), (1.0, -1.0), (-0.55, -1.0)])
_cube_side = polygon_sdf([(0.55, -0.55), (1.0, -1.0), (1.0, 0.55), (0.55, 1.0)])


def _ellipse(u: np.ndarray, v: np.ndarray, ru: float, rv: float, ov: float) -> np.ndarray:
    return (np.hypot(u / F32(ru), (v - F32(ov)) / F32(rv)) - F32(1.0)) * F32(min(ru, rv))


def _horizontal_shade(u: np.ndarray) -> np.ndarray:
    # Light from the upper left: brighter on the left of a curved surface.
    return np.clip(F32(0.95) - F32(0.3) * (u + F32(1.0)), 0.35, 1.0)


def _solid_layers(name: str, u: np.ndarray, v: np.ndarray) -> list[tuple[np.ndarray, np.ndarray | float]]:
    if name == "sphere":
        return [(np.hypot(u, v) - F32(1.0), np.clip(F32(1.05) - F32(0.45) * np.hypot(u + F32(0.4), v + F32(0.4)), 0.35, 1.0))]
    if name == "cube":
        return [(_cube_front(u, v), 0.75), (_cube_top(u, v), 1.0), (_cube_side(u, v), 0.5)]
    if name == "cylinder":
        body = np.minimum(box_sdf(u, v - F32(0.05), 0.8, 0.75), _ellipse(u, v, 0.8, 0.25, 0.8))
        return [(body, _horizontal_shade(u / F32(0.8))), (_ellipse(u, v, 0.8, 0.25, -0.7), 1.0)]
    if name == "capsule":
        seg = np.hypot(u, np.maximum(np.abs(v) - F32(0.5), F32(0.0))) - F32(0.5)
        return [(seg, _horizontal_shade(u / F32(0.5)))]
    raise KeyError(f"unknown solid {name!r}; known: {', '.join(SOLIDS)}")


SOLIDS: tuple[str, ...] = ("cube", "cylinder", "sphere", "capsule")


def draw_solids(
    canvas: np.ndarray,
    solids: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    radius: np.ndarray,
    rgb: np.ndarray,
) -> None:
    """Draw one shaded solid (indices into :data:`SOLIDS`) per image onto ``canvas`` in place.

    Args:
        canvas: float32 (N, 3, S, S).
        solids: (N,) indices into :data:`SOLIDS`.
        cx, cy: (N,) centre of the solid's bounding box; radius: (N,) its half-height.
        rgb: (N, 3) base colours (shaded per face).
    """
    size = canvas.shape[-1]
    solids = np.asarray(solids, dtype=np.int64)
    for k in np.unique(solids):
        idx = np.flatnonzero(solids == k)
        u, v = local_coords(size, cx[idx], cy[idx], radius[idx], np.zeros(idx.size, dtype=F32))
        for sd, shade in _solid_layers(SOLIDS[k], u, v):
            colour = rgb[idx] * F32(shade) if np.isscalar(shade) else rgb[idx][:, :, None, None] * shade[:, None]
            composite(canvas, idx, coverage(sd, radius[idx], size), colour.astype(F32))


def room(wall_rgb: np.ndarray, floor_rgb: np.ndarray, horizon: np.ndarray, size: int) -> np.ndarray:
    """A Shapes3D-like room: a wall above the horizon and a floor, darker towards the front.

    Args:
        wall_rgb, floor_rgb: (N, 3) colours.
        horizon: (N,) height of the wall/floor boundary in [0, 1] (from the top).
        size: image side S.

    Returns:
        float32 (N, 3, S, S).
    """
    _, y = pixel_axes(size)
    h = np.asarray(horizon, dtype=F32).reshape(-1, 1, 1)
    below = np.clip(F32(0.5) + (y - h) * F32(size), 0.0, 1.0)  # anti-aliased horizon
    floor_shade = F32(1.0) - F32(0.45) * np.clip((y - h) / (F32(1.0) - h), 0.0, 1.0)
    wall = wall_rgb[:, :, None, None] * F32(0.85)
    floor = floor_rgb[:, :, None, None] * floor_shade[:, None]
    b = below[:, None]
    return np.broadcast_to(wall * (F32(1.0) - b) + floor * b, (len(h), 3, size, size)).astype(F32)

