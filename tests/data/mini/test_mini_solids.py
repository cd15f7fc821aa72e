"""Shapes3D-like rooms and shaded solids."""

from __future__ import annotations

import numpy as np

from fif.data.mini import render as R
from fif.data.mini import solids as S


def test_solids_and_rooms():
    rng = np.random.default_rng(0)
    n = len(S.SOLIDS)
    canvas = S.room(np.full((n, 3), 0.2, np.float32), np.full((n, 3), 0.8, np.float32), np.full(n, 0.5, np.float32), 32)
    before = canvas.copy()
    S.draw_solids(canvas, np.arange(n), np.full(n, 0.5, np.float32), np.full(n, 0.6, np.float32),
                  np.full(n, 0.2, np.float32), R.palette(np.arange(n), rng))
    changed = (np.abs(canvas - before).sum(1) > 0.1).reshape(n, -1).mean(1)
    assert (changed > 0.04).all()
    assert len({tuple((np.abs(canvas[i] - before[i]).sum(0) > 0.1).ravel()) for i in range(n)}) == n
