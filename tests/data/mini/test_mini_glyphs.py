"""Glyphs of the mini world: handwritten digits, printed characters and seven-segment digits."""

from __future__ import annotations

import numpy as np
import pytest

from fif.data.mini import glyphs as G


def test_digit_and_letter_glyphs_render_ink():
    digits, labels = G.digit_glyphs()
    assert digits.shape == (1797, 8, 8) and set(labels) == set(range(10))
    letters = G.letter_glyphs("AB")
    assert letters.shape == (4, 28, 28) and (letters.reshape(4, -1).max(1) > 0.9).all()
    assert letters[1].sum() > letters[0].sum()  # bold has more ink than regular
    canvas = np.zeros((2, 3, 32, 32), dtype=np.float32)
    one = np.ones(2, dtype=np.float32)
    G.draw_glyphs(canvas, letters, np.array([0, 2]), one * 0.5, one * 0.5, one * 0.4, one * 0, np.ones((2, 3), np.float32))
    assert (canvas.reshape(2, -1).max(1) > 0.9).all()
    assert np.abs(canvas[0] - canvas[1]).sum() > 10  # "A" is not "B"


def _seven(digit: int, size: int = 32) -> np.ndarray:
    canvas = np.zeros((1, 3, size, size), dtype=np.float32)
    one = np.ones(1, dtype=np.float32)
    G.draw_seven_segment(canvas, np.array([digit]), one * 0.5, one * 0.5, one * 0.35, one * 0, np.ones((1, 3), np.float32))
    return canvas[0, 0]


def test_seven_segment_digits_light_their_segments_and_differ():
    ink = {d: _seven(d) for d in range(10)}
    assert ink[8].sum() > ink[0].sum() > ink[7].sum() > ink[1].sum() > 0  # 7, 6, 3 and 2 segments lit
    masks = [tuple((ink[d] > 0.5).ravel()) for d in range(10)]
    assert len(set(masks)) == 10
    assert ink[1][:, :14].max() < 0.5  # a "1" is the two right-hand segments only


@pytest.mark.parametrize("digit", range(10))
def test_seven_segment_digits_stay_inside_the_image(digit):
    ink = _seven(digit)
    assert ink[0].max() == 0 and ink[-1].max() == 0 and ink[:, 0].max() == 0 and ink[:, -1].max() == 0
