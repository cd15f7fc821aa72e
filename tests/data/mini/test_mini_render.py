"""The mini world's drawing primitives: every shape, fill, glyph and background draws what it should."""

from __future__ import annotations

import numpy as np
import pytest

from fif.data.mini import render as R


def _draw_one(name: str, size: int, fill: int = 0) -> np.ndarray:
    canvas = np.zeros((1, 3, size, size), dtype=np.float32)
    one = np.ones(1, dtype=np.float32)
    R.draw_shapes(canvas, np.zeros(1, dtype=np.int64), (name,), one * 0.5, one * 0.5, one * 0.3, one * 0.0,
                  np.ones((1, 3), dtype=np.float32), fills=np.array([fill]))
    return canvas[0, 0]


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("name", list(R.SHAPES))
def test_every_shape_covers_a_plausible_area_inside_the_image(name, size):
    ink = _draw_one(name, size)
    area = ink.sum() / (size * size)
    # radius 0.3 of the side: the bounding square is 36% of the image; every shape covers a decent part
    assert 0.05 < area < 0.36, f"{name}: area {area:.3f}"
    assert ink[0].max() == 0 and ink[-1].max() == 0 and ink[:, 0].max() == 0 and ink[:, -1].max() == 0


def test_shapes_are_distinct_masks():
    masks = {name: _draw_one(name, 32) > 0.5 for name in R.SHAPES}
    names = list(masks)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert (masks[a] != masks[b]).sum() >= 8, f"{a} and {b} look the same at 32 px"


def test_shape_area_is_resolution_independent():
    for name in R.SHAPES:
        a32, a64 = _draw_one(name, 32).mean(), _draw_one(name, 64).mean()
        assert abs(a32 - a64) < 0.03, name


def test_unknown_shape_and_fill_name_the_known_ones():
    u = np.zeros((1, 2, 2), dtype=np.float32)
    with pytest.raises(KeyError, match="circle"):
        R.shape_sdf("blob", u, u)
    with pytest.raises(KeyError, match="hatched"):
        R.fill_pattern("plaid", u, u, u, np.ones((1, 1, 1), dtype=np.float32))


@pytest.mark.parametrize("fill", range(1, len(R.FILLS)))
def test_fills_change_the_inside_of_a_solid_shape(fill):
    solid = _draw_one("square", 32)
    patterned = _draw_one("square", 32, fill)
    assert np.abs(solid - patterned).sum() > 5, R.FILLS[fill]


def test_backgrounds_are_in_range_and_textures_vary():
    rng = np.random.default_rng(0)
    kinds = np.arange(len(R.BACKGROUNDS)).repeat(4)
    bg = R.backgrounds(kinds, 32, rng)
    assert bg.shape == (len(kinds), 3, 32, 32) and bg.dtype == np.float32
    assert bg.min() >= 0 and bg.max() <= 1
    spread = bg.std(axis=(1, 2, 3)).reshape(len(R.BACKGROUNDS), 4).mean(1)
    assert spread[0] < 0.05  # plain is flat (a slight tint only)
    assert (spread[1:] > 0.04).all()  # noise, stripes, checks and gradients are not


def test_digit_and_letter_glyphs_render_ink():
    digits, labels = R.digit_glyphs()
    assert digits.shape == (1797, 8, 8) and set(labels) == set(range(10))
    letters = R.letter_glyphs("AB")
    assert letters.shape == (4, 28, 28) and (letters.reshape(4, -1).max(1) > 0.9).all()
    assert letters[1].sum() > letters[0].sum()  # bold has more ink than regular
    canvas = np.zeros((2, 3, 32, 32), dtype=np.float32)
    one = np.ones(2, dtype=np.float32)
    R.draw_glyphs(canvas, letters, np.array([0, 2]), one * 0.5, one * 0.5, one * 0.4, one * 0, np.ones((2, 3), np.float32))
    assert (canvas.reshape(2, -1).max(1) > 0.9).all()
    assert np.abs(canvas[0] - canvas[1]).sum() > 10  # "A" is not "B"


def test_solids_and_rooms():
    rng = np.random.default_rng(0)
    n = len(R.SOLIDS)
    canvas = R.room(np.full((n, 3), 0.2, np.float32), np.full((n, 3), 0.8, np.float32), np.full(n, 0.5, np.float32), 32)
    before = canvas.copy()
    R.draw_solids(canvas, np.arange(n), np.full(n, 0.5, np.float32), np.full(n, 0.6, np.float32),
                  np.full(n, 0.2, np.float32), R.palette(np.arange(n), rng))
    changed = (np.abs(canvas - before).sum(1) > 0.1).reshape(n, -1).mean(1)
    assert (changed > 0.04).all()
    assert len({tuple((np.abs(canvas[i] - before[i]).sum(0) > 0.1).ravel()) for i in range(n)}) == n


def test_to_uint8_rounds_and_clips():
    x = np.array([-0.1, 0.0, 0.5, 1.0, 1.2], dtype=np.float32).reshape(1, 1, 1, 5)
    assert R.to_uint8(x).ravel().tolist() == [0, 0, 128, 255, 255]
