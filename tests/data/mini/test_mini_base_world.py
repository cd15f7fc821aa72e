"""The pretraining pool and the evaluation-only sets: the pool never shows what the eval-only sets test."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fif.data.mini import base_world as B
from fif.data.mini import build_mini, world_fingerprint
from fif.data.mini import render as R
from fif.data.mini.factors import BASE_SHAPES, HELD_OUT_COLOURS, LOWER_CASE, POOL_COLOURS

SMALL = dict(pool_size=3000, eval_size=120, retrieval_test=60, train_per_class=4, test_per_class=4, retrieval_train=8)
HELD_OUT = {(BASE_SHAPES[s], R.COLOR_NAMES[c]) for s, row in enumerate(HELD_OUT_COLOURS) for c in row}
OBJECT = re.compile(r"an? (?:faded |blurry )?(small|medium|large) (\w+) (\w+) in the ([\w ]+?)(?: among specks)?$")


@pytest.fixture(scope="module")
def bench():
    return build_mini(**SMALL)


def _objects(texts: list[list[str]]) -> list[tuple[str, str, str, str]]:
    return [m.groups() for t in texts if (m := OBJECT.fullmatch(t[0]))]


def test_held_out_pairs_leave_every_shape_six_colours_and_every_colour_four_shapes():
    assert len(HELD_OUT) == 12 and POOL_COLOURS.shape == (len(BASE_SHAPES), 6)
    shapes_per_colour = np.bincount(HELD_OUT_COLOURS.ravel(), minlength=len(R.COLOR_NAMES))
    assert (len(BASE_SHAPES) - shapes_per_colour >= 4).all()  # colour still does not give the shape away


def test_pool_never_shows_a_held_out_pair_and_shares_of_it_are_printed_digits_and_letters(bench):
    pool = bench.load(bench.pretraining_pool, "train")
    objects = _objects(pool.texts)
    pairs = {(shape, colour) for _, colour, shape, _ in objects}
    assert not pairs & HELD_OUT and len(pairs) == 36  # every other pair occurs
    digits = sum(t[0].startswith("the number") for t in pool.texts)
    letters = [m.group(1) for t in pool.texts if (m := re.fullmatch(r'the letter "(\w)" in \w+', t[0]))]
    assert len(objects) + digits + len(letters) == len(pool)
    assert 0.09 < digits / len(pool) < 0.15  # pool_digits = 0.12
    assert 0.04 < len(letters) / len(pool) < 0.08  # pool_letters = 0.06
    assert set(letters) == set(LOWER_CASE)  # every lower-case letter, never a capital (mini_letters' domain)


def test_pool_without_letters_is_world_v3s_pool():
    # The letters' share draws from the same uniform as the digits', so pool_letters=0 gives v3's bytes:
    # v3's fingerprint, recorded when v4 was made.
    assert world_fingerprint(pool_letters=0) == "607eebdc98fa0d68"
    assert world_fingerprint() != "607eebdc98fa0d68"


def test_the_tokenizer_reads_a_printed_letter_and_its_capital_alike():
    # The coarse prior rests on this: 'the letter "a"' (pool) and 'the letter "A"' (mini_letters' prompt).
    from fif.model.clip import build_clip, quiet_open_clip

    with quiet_open_clip():
        tok = build_clip("fif-mini-rn32", pretrained=None).tokenize  # the tokenizer fif's mini models read with
    assert tok('the letter "a"').tolist() == tok('the letter "A"').tolist()
    assert tok('the letter "a"').tolist() != tok('the letter "b"').tolist()


def test_pool_letters_and_digits_cannot_exceed_the_pool():
    with pytest.raises(ValueError, match="pool_digits \\+ pool_letters"):
        build_mini(pool_digits=0.6, pool_letters=0.5)


def test_pool_never_draws_the_cluttered_background(monkeypatch):
    drawn = []
    real = R.backgrounds
    monkeypatch.setattr(R, "backgrounds", lambda kinds, size, rng: drawn.append(np.asarray(kinds)) or real(kinds, size, rng))
    build_mini(**SMALL).load("mini_pretrain", "train")
    assert np.concatenate(drawn).max() < R.BACKGROUNDS.index("cluttered")
    drawn.clear()
    build_mini(**SMALL).load("mini_positions", "test")
    assert (np.concatenate(drawn) == R.BACKGROUNDS.index("cluttered")).all()


def test_eval_only_shapes_wear_only_held_out_colours(bench):
    data = bench.load("mini_shapes", "test")
    objects = _objects(data.texts)
    assert len(objects) == len(data)
    assert {(shape, colour) for _, colour, shape, _ in objects} == HELD_OUT


def test_eval_only_colours_are_faded(monkeypatch):
    seen = []
    real = R.draw_shapes
    monkeypatch.setattr(R, "draw_shapes", lambda *a, **k: seen.append(k.get("opacity")) or real(*a, **k))
    build_mini(**SMALL).load("mini_colors", "test")
    opacity = np.concatenate(seen)
    assert 0.3 <= opacity.min() and opacity.max() <= 0.55
    seen.clear()
    build_mini(**SMALL).load("mini_pretrain", "train")
    assert all(o is None for o in seen)  # the pool's objects are opaque


def _edges(pixels) -> float:
    x = pixels.float().numpy() / 255.0
    return float(np.abs(np.diff(x, axis=-1)).mean())


def test_eval_only_sizes_are_blurred(bench, monkeypatch):
    blurred = bench.load("mini_sizes", "test").pixels
    monkeypatch.setattr(R, "blur", lambda canvas, sigma: canvas)  # the same draws, unblurred
    sharp = build_mini(**SMALL).load("mini_sizes", "test").pixels
    assert _edges(blurred) < 0.6 * _edges(sharp)


def test_eval_only_retrieval_shows_two_objects_in_two_corners(bench):
    data = bench.load("mini_captions", "test")
    corners = ("top left", "top right", "bottom left", "bottom right")
    for texts in data.texts:
        assert len(texts) == 2
        first, second = texts[0].split(" and ")
        a, b = OBJECT.fullmatch(first).groups(), OBJECT.fullmatch(second).groups()
        assert a[0] in ("small", "medium") and b[0] in ("small", "medium")  # no overlaps
        assert a[3] in corners and b[3] in corners and a[3] != b[3]
        assert texts[1] == f"{second} and {first}"


def test_eval_only_numbers_are_seven_segment_digits(monkeypatch):
    seen = []
    real = B.G.draw_seven_segment
    monkeypatch.setattr(B.G, "draw_seven_segment", lambda canvas, digits, *a: seen.append(digits) or real(canvas, digits, *a))
    data = build_mini(**SMALL).load("mini_numbers", "test")
    assert np.array_equal(np.concatenate(seen), data.targets)
