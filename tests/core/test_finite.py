"""Finding NaN/inf in weights and optimizer state: on the device for the loop, by name for messages."""

from __future__ import annotations

import torch

from fif.core.finite import all_finite, checked_tensors, describe_nonfinite, nonfinite_counts, optimizer_tensors


def test_all_finite_sees_nan_and_both_infinities_and_ignores_integers():
    ok = [torch.ones(3), torch.zeros(2, dtype=torch.long), torch.tensor([1e30])]
    assert bool(all_finite(ok)) and bool(all_finite([]))
    for bad in (float("nan"), float("inf"), float("-inf")):
        assert not bool(all_finite([*ok, torch.tensor([0.0, bad])])), bad
    assert all_finite(ok).device == ok[0].device and all_finite(ok).dtype == torch.bool


def test_attention_masks_hold_minus_inf_by_design_and_are_not_checked():
    state = {"text.attn_mask": torch.full((2, 2), float("-inf")).triu(1), "w": torch.ones(2)}
    assert bool(all_finite(checked_tensors(state))) and nonfinite_counts(state) == {}
    state["w"][0] = float("nan")
    assert not bool(all_finite(checked_tensors(state)))
    assert nonfinite_counts(state) == {"w": 1}


def test_counts_name_the_tensors():
    state = {"a": torch.tensor([float("nan"), 1.0, float("inf")]), "b": torch.ones(2), "c": torch.full((4,), float("nan"))}
    counts = nonfinite_counts(state)
    assert counts == {"a": 2, "c": 4}
    assert describe_nonfinite(counts) == "6 NaN/inf values in 2 tensors (a: 2, c: 4)"


def test_optimizer_state_is_watched():
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([p], lr=1.0)
    assert optimizer_tensors(opt) == []
    p.grad = torch.ones(2)
    opt.step()
    moments = optimizer_tensors(opt)
    assert len(moments) == 3 and bool(all_finite(moments))  # step, exp_avg, exp_avg_sq
    opt.state[p]["exp_avg_sq"][0] = float("nan")
    assert not bool(all_finite(optimizer_tensors(opt)))
