"""Checkpoint-history weights, in-place EMA, running merge."""

from __future__ import annotations

import math

import pytest
import torch

from fif.merge import HISTORY_SCHEMES, MergeError, ema_update_, history_weights, merge, running_merge


@pytest.mark.parametrize(
    "scheme, raw",
    [
        ("uniform", [1, 1, 1]),
        ("linear", [1, 2, 3]),
        ("sqrt", [1, 2**0.5, 3**0.5]),
        ("quadratic", [1, 4, 9]),
        ("exponential", [1, 2, 4]),
        ("reversed", [3, 2, 1]),
        ("cubic", [1, 8, 27]),
        ("fifth", [1, 32, 243]),
        ("tenth", [1, 1024, 59049]),
        ("log", [math.log(2), math.log(3), math.log(4)]),
        ("linear_reversed", [3, 2, 1]),
        ("cubic_reversed", [27, 8, 1]),
        ("exponential_reversed", [4, 2, 1]),
        ("log_reversed", [math.log(4), math.log(3), math.log(2)]),
    ],
)
def test_history_weights(scheme, raw):
    assert history_weights(scheme, 3) == pytest.approx([r / sum(raw) for r in raw])


def test_history_weights_cover_every_scheme_and_reject_bad_input():
    for scheme in HISTORY_SCHEMES:
        assert sum(history_weights(scheme, 200)) == pytest.approx(1.0)
    assert history_weights("exponential", 1) == [1.0]
    assert {f"{s}_reversed" for s in ("linear", "sqrt", "quadratic", "cubic", "fifth", "tenth", "exponential", "log")} < set(
        HISTORY_SCHEMES
    )
    with pytest.raises(MergeError, match="Valid: uniform, linear, sqrt, quadratic, cubic"):
        history_weights("septic", 3)
    with pytest.raises(MergeError, match="at least one"):
        history_weights("uniform", 0)


def test_ema_update_in_place():
    avg = {"w": torch.zeros(3), "n": torch.tensor(0)}
    new = {"w": torch.ones(3, dtype=torch.bfloat16), "n": torch.tensor(7)}
    w = avg["w"]
    ema_update_(avg, new, decay=0.9)
    assert avg["w"] is w and avg["w"].dtype == torch.float32
    assert torch.allclose(avg["w"], torch.full((3,), 0.1))
    assert avg["n"].item() == 7
    ema_update_(avg, new, decay=0.9)
    assert torch.allclose(avg["w"], torch.full((3,), 0.19))


def test_ema_update_errors():
    with pytest.raises(MergeError, match="decay must be in"):
        ema_update_({"w": torch.zeros(1)}, {"w": torch.zeros(1)}, 1.5)
    with pytest.raises(MergeError, match="missing \\['w'\\], unexpected \\['v'\\]"):
        ema_update_({"w": torch.zeros(1)}, {"v": torch.zeros(1)}, 0.5)
    with pytest.raises(MergeError, match="'w' has shape \\(2,\\)"):
        ema_update_({"w": torch.zeros(1)}, {"w": torch.zeros(2)}, 0.5)


def test_running_merge_as_uniform_mean_and_as_ema():
    checkpoints = [{"w": torch.tensor([float(i), 2.0 * i])} for i in range(1, 5)]
    running = None
    for t, ckpt in enumerate(checkpoints):
        running = running_merge(running, ckpt, weights=[1, t]) if running is not None else running_merge(None, ckpt)
    assert torch.allclose(running["w"], merge("interpolation", checkpoints)["w"])
    assert running["w"].data_ptr() != checkpoints[-1]["w"].data_ptr()
    ema = running_merge({"w": torch.zeros(2)}, {"w": torch.ones(2)}, weights=[0.25, 0.75])
    assert torch.allclose(ema["w"], torch.full((2,), 0.25))
    tv = running_merge({"w": torch.zeros(2)}, {"w": torch.ones(2)}, "task_arithmetic", base={"w": torch.zeros(2)})
    assert torch.allclose(tv["w"], torch.ones(2))
