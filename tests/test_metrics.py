import math

from fif.metrics import geometric_mean, macro_mean, stream_point, trajectory_mean


def test_stream_point():
    roles = {"a": "adaptation", "b": "adaptation", "e": "eval_only"}
    p = stream_point({"a": 10.0, "b": 30.0, "e": 80.0}, roles)
    assert p["a_ka"] == 20.0 and p["a_zs"] == 80.0 and math.isclose(p["gm"], 40.0)


def test_missing_roles_give_none():
    assert macro_mean({"a": 1.0}, ["b"]) is None
    assert geometric_mean(None, 3.0) is None
    assert trajectory_mean([{"a_ka": 1.0, "a_zs": None, "gm": None}, {"a_ka": 3.0, "a_zs": None, "gm": None}]) == {
        "a_ka": 2.0, "a_zs": None, "gm": None,
    }
