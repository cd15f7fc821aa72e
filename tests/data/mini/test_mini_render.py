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
    assert (spread[1:] > 0.04).all()  # noise, stripes, checks, gradients and clutter are not


def test_cluttered_background_is_a_plain_tone_with_coloured_specks_held_out_of_the_pool():
    assert "cluttered" in R.BACKGROUNDS and "cluttered" not in R.POOL_BACKGROUNDS
    rng = np.random.default_rng(1)
    kinds = np.array([R.BACKGROUNDS.index("plain"), R.BACKGROUNDS.index("cluttered")]).repeat(8)
    bg = R.backgrounds(kinds, 32, rng)
    chroma = bg.max(axis=1) - bg.min(axis=1)  # saturated specks on a near-neutral tone
    specks = (chroma > 0.3).reshape(2, 8, -1).mean(-1)
    assert (specks[0] == 0).all() and (specks[1] > 0.01).all() and (specks[1] < 0.3).all()


def test_opacity_fades_an_object_towards_its_background():
    canvas = np.zeros((3, 3, 32, 32), dtype=np.float32)
    one = np.ones(3, dtype=np.float32)
    R.draw_shapes(canvas, np.zeros(3, dtype=np.int64), ("square",), one * 0.5, one * 0.5, one * 0.3, one * 0,
                  np.ones((3, 3), np.float32), opacity=np.array([1.0, 0.5, 0.0], np.float32))
    centre = canvas[:, 0, 16, 16]
    assert np.allclose(centre, [1.0, 0.5, 0.0])


def test_blur_spreads_an_edge_keeps_the_mean_and_leaves_flat_images_alone():
    canvas = np.zeros((2, 3, 32, 32), dtype=np.float32)
    canvas[:, :, :, 16:] = 1.0
    out = R.blur(canvas, np.array([0.001, 0.04]))
    assert np.allclose(out[0], canvas[0], atol=1e-4)  # a tiny sigma changes nothing
    row = out[1, 0, 10]
    assert 0 < row[15] < 0.5 < row[16] < 1 and row[0] == 0 and row[-1] == 1  # a soft edge, the far ends unchanged
    assert abs(out[1].mean() - canvas[1].mean()) < 1e-3
    flat = np.full((1, 3, 32, 32), 0.3, np.float32)
    assert np.allclose(R.blur(flat, np.array([0.05])), 0.3, atol=1e-5)


def test_to_uint8_rounds_and_clips():
    x = np.array([-0.1, 0.0, 0.5, 1.0, 1.2], dtype=np.float32).reshape(1, 1, 1, 5)
    assert R.to_uint8(x).ravel().tolist() == [0, 0, 128, 255, 255]
