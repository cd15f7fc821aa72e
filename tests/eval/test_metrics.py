import math

from fif.eval.metrics import geometric_mean, macro_mean, stream_point, trajectory_mean


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


# ----------------------------------------------------------------------------------------------
# Score matrix metrics (hand-computed)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fif.eval.metrics import (  # noqa: E402
    ScoreMatrix,
    backward_transfer,
    change_from_zero_shot,
    forgetting,
    learned_tasks,
    mean_defined,
)

ROLES = {"a": "adaptation", "b": "adaptation", "e": "eval_only"}


def matrix() -> ScoreMatrix:
    # rows: zero-shot, after task 0, 1, 2
    return ScoreMatrix.from_rows(
        [(-1, {"a": 10, "b": 20, "e": 50}), (0, {"a": 40, "b": 20, "e": 48}), (1, {"a": 50, "b": 60, "e": 46}),
         (2, {"a": 35, "b": 55, "e": 45})],
        ROLES,
    )


def test_change_from_zero_shot():
    d = change_from_zero_shot(matrix())
    np.testing.assert_array_equal(d[0], [0, 0, 0])
    np.testing.assert_array_equal(d[-1], [25, 35, -5])


def test_forgetting_from_first_learned_task():
    m = matrix()
    # a: max(40, 50) - 35; b learned at task 1: max(60) - 55; a dataset learned in the last task: undefined
    assert forgetting(m, {"a": 0, "b": 1}) == {"a": 15.0, "b": 5.0}
    assert forgetting(m, {"a": 2}) == {"a": None}
    assert forgetting(m, {"a": 7, "zz": 0}) == {"a": None, "zz": None}  # never reached / unknown dataset


def test_backward_transfer_from_last_learned_task():
    m = matrix()
    assert backward_transfer(m, {"a": 1, "b": 0}) == {"a": -15.0, "b": 35.0}
    assert backward_transfer(m, {"b": 2}) == {"b": None}
    assert mean_defined({"a": -15.0, "b": 35.0, "c": None}) == 10.0
    assert mean_defined({"c": None}) is None


def test_learned_tasks_spans():
    assert learned_tasks([["a"], ["b", "a"], ["c"]]) == {"a": (0, 1), "b": (1, 1), "c": (2, 2)}


def test_missing_scores_are_nan_and_skipped():
    m = ScoreMatrix.from_rows([(-1, {"a": 10}), (0, {"a": 30, "b": 5}), (1, {"a": 20, "b": 1})], ROLES)
    assert np.isnan(m.column("b")[0])
    assert forgetting(m, {"a": 0, "b": 0}) == {"a": 10.0, "b": 4.0}
    with pytest.raises(ValueError, match="shape"):
        ScoreMatrix((-1,), ("a", "b"), ROLES, np.zeros((2, 2)))
