"""Adaptation sets whose pictures encode their class in a checkable way: relations and shades."""

from __future__ import annotations

import numpy as np
import pytest

from fif.data.mini import build_mini
from fif.data.mini.factors import RELATIONS, SHADES

SMALL = dict(pool_size=8, eval_size=8, retrieval_train=8, retrieval_test=8, train_per_class=40, test_per_class=4)


@pytest.fixture(scope="module")
def bench():
    return build_mini(**SMALL)


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_relations_put_the_red_shape_above_below_beside_or_inside_the_blue_one(bench):
    data = bench.load("mini_relations", "train")
    x = data.pixels.float().numpy() / 255.0
    red = (x[:, 0] > 0.6) & (x[:, 1] < 0.35) & (x[:, 2] < 0.35)
    blue = (x[:, 2] > 0.6) & (x[:, 0] < 0.4) & (x[:, 1] < 0.5)
    for i, target in enumerate(data.targets):
        dx, dy = _centroid(red[i]) - _centroid(blue[i])
        relation = RELATIONS[target]
        if relation == "above":
            assert dy < -4 and abs(dx) < abs(dy)
        elif relation == "below":
            assert dy > 4 and abs(dx) < abs(dy)
        elif relation == "beside":
            assert abs(dx) > 4 and abs(dy) < abs(dx)
        else:  # inside: the red shape lies within the blue one's bounding box, and the blue one is much larger
            (ry, rx), (by, bx) = np.nonzero(red[i]), np.nonzero(blue[i])
            assert bx.min() < rx.min() and rx.max() < bx.max() and by.min() < ry.min() and ry.max() < by.max()
            assert blue[i].sum() > 3 * red[i].sum()
        assert relation in data.texts[i][0]


def test_shades_are_light_or_dark_versions_of_their_colour(bench):
    data = bench.load("mini_shades", "train")
    x = data.pixels.float().numpy() / 255.0
    saturated = (x.max(axis=1) - x.min(axis=1)) > 0.2  # the object; backgrounds are near-neutral
    seen = saturated.reshape(len(x), -1).sum(1) >= 10
    assert seen.mean() > 0.9
    brightness = np.array([x[i].max(axis=0)[saturated[i]].mean() if seen[i] else np.nan for i in range(len(x))])
    light = np.array([SHADES[t].startswith("light") for t in data.targets])
    assert np.nanmin(brightness[light]) > np.nanmax(brightness[~light])
