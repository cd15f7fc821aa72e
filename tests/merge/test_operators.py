"""Each merge operator against results computed by hand on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from fif.merge import MergeError, merge
from fif.merge.operators import (
    SignedMass,
    breadcrumbs_mask,
    model_stock_ratio,
    slerp_tensor,
    sum_and_mean_pairwise_cosine,
    trim_top_k_,
)


def sd(**tensors: list[float] | torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v, dtype=torch.float32) for k, v in tensors.items()}


def close(a: torch.Tensor, b: list[float] | torch.Tensor, atol: float = 1e-6) -> bool:
    return torch.allclose(a, torch.as_tensor(b, dtype=a.dtype), atol=atol, rtol=0)


# --- interpolation ----------------------------------------------------------------------------


def test_interpolation_normalises_weights():
    a, b = sd(w=[0.0, 4.0]), sd(w=[8.0, 0.0])
    out = merge("interpolation", [a, b], weights=[1, 3])  # → 0.25·a + 0.75·b
    assert close(out["w"], [6.0, 1.0])
    assert close(merge("interpolation", [a, b])["w"], [4.0, 2.0])  # uniform


# --- SLERP ------------------------------------------------------------------------------------


def test_slerp_midpoint_of_orthogonal_unit_vectors_has_unit_norm():
    out = merge("slerp", [sd(w=[1.0, 0.0]), sd(w=[0.0, 1.0])], t=0.5)["w"]
    assert close(out, [math.sqrt(0.5), math.sqrt(0.5)])
    assert out.norm().item() == pytest.approx(1.0, abs=1e-6)
    quarter = merge("slerp", [sd(w=[1.0, 0.0]), sd(w=[0.0, 1.0])], t=0.25)["w"]
    assert close(quarter, [math.cos(math.pi / 8), math.sin(math.pi / 8)])


def test_slerp_keeps_norm_of_equal_norm_tensors_and_endpoints_are_exact():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 5, generator=g)
    b = torch.randn(4, 5, generator=g)
    b = b * (a.norm() / b.norm())
    for t in (0.1, 0.5, 0.9):
        assert slerp_tensor(a, b, t).norm().item() == pytest.approx(a.norm().item(), rel=1e-5)
    assert torch.equal(merge("slerp", [{"w": a}, {"w": b}], t=0.0)["w"], a)
    assert torch.equal(merge("slerp", [{"w": a}, {"w": b}], t=1.0)["w"], b)


def test_slerp_falls_back_to_lerp_when_parallel():
    a = torch.tensor([1.0, 2.0, 3.0])
    assert close(slerp_tensor(a, 2 * a, 0.5), 1.5 * a)
    assert close(slerp_tensor(a, torch.zeros(3), 0.5), 0.5 * a)  # a zero tensor has no angle


# --- task arithmetic --------------------------------------------------------------------------


def test_task_arithmetic():
    base = sd(w=[1.0, 1.0, 1.0])
    m1, m2 = sd(w=[2.0, 1.0, 0.0]), sd(w=[1.0, 3.0, 1.0])  # τ1 = [1, 0, -1], τ2 = [0, 2, 0]
    assert close(merge("task_arithmetic", [m1, m2], base, lam=0.5)["w"], [1.5, 2.0, 0.5])
    assert torch.equal(merge("task_arithmetic", [m1, m2], base, lam=0.0)["w"], base["w"])


# --- TIES -------------------------------------------------------------------------------------

# Three task vectors over six coordinates; k = 0.5 keeps the 3 largest |τ| of each.
TAU1 = [0.5, -1.0, 0.2, 3.0, -0.1, 0.0]  # trimmed: [0.5, -1.0, 0, 3.0, 0, 0]
TAU2 = [-2.0, 0.4, 0.3, -1.0, 0.6, 0.05]  # trimmed: [-2.0, 0, 0, -1.0, 0.6, 0]
TAU3 = [1.0, -0.2, -0.9, -2.5, 0.5, 0.1]  # trimmed: [1.0, 0, -0.9, -2.5, 0, 0]
# summed mass per coordinate: [-0.5, -1.0, -0.9, -0.5, 0.6, 0] → elected signs [-, -, -, -, +, 0]
# disjoint mean over agreeing entries: [-2.0, -1.0, -0.9, (-1.0 - 2.5)/2, 0.6, 0]
TIES_MERGED = [-2.0, -1.0, -0.9, -1.75, 0.6, 0.0]


def test_ties_steps_by_hand():
    trimmed = [trim_top_k_(torch.tensor(t), 0.5) for t in (TAU1, TAU2, TAU3)]
    assert close(trimmed[0], [0.5, -1.0, 0, 3.0, 0, 0])
    assert close(trimmed[1], [-2.0, 0, 0, -1.0, 0.6, 0])
    assert close(trimmed[2], [1.0, 0, -0.9, -2.5, 0, 0])
    mass = SignedMass()
    for t in trimmed:
        mass.add(t)
    assert mass.sign().tolist() == [-1, -1, -1, -1, 1, 0]
    assert close(mass.disjoint_mean(), TIES_MERGED)


def test_signed_mass_matches_direct_sign_election_and_disjoint_mean():
    g = torch.Generator().manual_seed(0)
    taus = torch.randn(5, 40, generator=g).round()  # many zeros and sign ties
    mass = SignedMass()
    for t in taus:
        mass.add(t)
    gamma = torch.sign(taus.sum(0))
    agree = (torch.sign(taus) == gamma) & (taus != 0)
    direct = (taus * agree).sum(0) / agree.sum(0).clamp(min=1)
    assert torch.equal(mass.sign(), gamma)
    assert torch.allclose(mass.disjoint_mean(), direct)


def test_ties_merge_adds_scaled_merged_vector_to_base():
    base = sd(w=[1.0] * 6)
    models = [sd(w=[1.0 + x for x in t]) for t in (TAU1, TAU2, TAU3)]
    out = merge("ties", models, base, k=0.5, lam=0.5)
    assert close(out["w"], [1.0 + 0.5 * x for x in TIES_MERGED])


def test_ties_k_one_keeps_everything_and_keeps_at_least_one_entry():
    t = torch.tensor([0.3, -0.1])
    assert torch.equal(trim_top_k_(t.clone(), 1.0), t)
    assert close(trim_top_k_(t.clone(), 0.01), [0.3, 0.0])  # ⌊0.02 + ½⌋ = 0 → at least the largest stays


# --- DARE -------------------------------------------------------------------------------------


def test_dare_rescales_kept_entries_and_is_unbiased():
    n = 200_000
    base, model = {"w": torch.zeros(n)}, {"w": torch.ones(n)}
    out = merge("dare", [model], base, p=0.75, seed=3)["w"]
    kept = out != 0
    assert torch.allclose(out[kept], torch.full((int(kept.sum()),), 4.0))  # 1 / (1 − 0.75)
    assert kept.float().mean().item() == pytest.approx(0.25, abs=0.01)
    assert out.mean().item() == pytest.approx(1.0, abs=0.02)  # E[τ̃] = τ


def test_dare_is_seeded_and_independent_of_key_order():
    g = torch.Generator().manual_seed(1)
    base = {"a": torch.zeros(50), "b": torch.zeros(50)}
    models = [{"a": torch.randn(50, generator=g), "b": torch.randn(50, generator=g)} for _ in range(2)]
    one = merge("dare", models, base, p=0.5, seed=7)
    again = merge("dare", models, base, p=0.5, seed=7)
    other = merge("dare", models, base, p=0.5, seed=8)
    reordered = merge("dare", [{"b": m["b"], "a": m["a"]} for m in models], {"b": base["b"], "a": base["a"]}, p=0.5, seed=7)
    assert all(torch.equal(one[k], again[k]) and torch.equal(one[k], reordered[k]) for k in one)
    assert not torch.equal(one["a"], other["a"])


def test_dare_with_no_drop_equals_task_arithmetic_and_ties_combine():
    base = sd(w=[1.0] * 6)
    models = [sd(w=[1.0 + x for x in t]) for t in (TAU1, TAU2, TAU3)]
    assert torch.allclose(merge("dare", models, base, p=0.0)["w"], merge("task_arithmetic", models, base)["w"])
    dare_ties = merge("dare", models, base, p=0.0, combine="ties")["w"]
    assert torch.allclose(dare_ties, merge("ties", models, base, k=1.0)["w"])


# --- Breadcrumbs ------------------------------------------------------------------------------

CRUMBS = [0.1, -5.0, 0.3, 2.0, -0.2, 1.0, 0.05, -0.4, 0.6, 10.0]


def test_breadcrumbs_mask_drops_smallest_and_largest_per_tensor():
    # β = 0.3 drops the 3 smallest |τ| (0.05, 0.1, -0.2), γ = 0.1 the largest (10.0)
    mask = breadcrumbs_mask(torch.tensor(CRUMBS), beta=0.3, gamma=0.1)
    assert mask.tolist() == [False, True, True, True, False, True, False, True, True, False]


def test_breadcrumbs_mask_per_row():
    tau = torch.tensor(CRUMBS).view(2, 5)
    mask = breadcrumbs_mask(tau, beta=0.2, gamma=0.2, per_row=True)
    assert mask.tolist() == [[False, False, True, True, True], [True, False, True, True, False]]


def test_breadcrumbs_merge_sums_masked_task_vectors():
    base = sd(w=[0.0] * 10)
    tau2 = [1.0, 2.0, 3.0, 4.0, 5.0, -6.0, 7.0, 8.0, 9.0, -10.0]
    m1, m2 = sd(w=CRUMBS), sd(w=tau2)
    out = merge("breadcrumbs", [m1, m2], base, beta=0.3, gamma=0.1, lam=2.0)["w"]
    expected1 = [0, -5.0, 0.3, 2.0, 0, 1.0, 0, -0.4, 0.6, 0]
    expected2 = [0, 0, 0, 4.0, 5.0, -6.0, 7.0, 8.0, 9.0, 0]
    assert close(out, [2 * (x + y) for x, y in zip(expected1, expected2)])


# --- MagMax -----------------------------------------------------------------------------------


def test_magmax_takes_largest_magnitude_per_coordinate():
    base = sd(w=[1.0, 1.0, 1.0])
    m1, m2 = sd(w=[2.0, -2.0, 1.5]), sd(w=[-1.0, 3.0, 1.4])  # τ1 = [1, -3, .5], τ2 = [-2, 2, .4]
    assert close(merge("magmax", [m1, m2], base)["w"], [-1.0, -2.0, 1.5])
    assert close(merge("magmax", [m1, m2], base, lam=0.5)["w"], [0.0, -0.5, 1.25])


# --- Model Stock ------------------------------------------------------------------------------


def test_model_stock_ratio():
    assert model_stock_ratio(1.0, 2) == pytest.approx(1.0)
    assert model_stock_ratio(0.0, 5) == 0.0
    assert model_stock_ratio(0.5, 3) == pytest.approx(0.75)  # 3·½ / (1 + 2·½)
    assert model_stock_ratio(-0.3, 2) == 0.0  # diverging task vectors stay at the base


def test_streamed_mean_pairwise_cosine_matches_pairs():
    g = torch.Generator().manual_seed(0)
    taus = [torch.randn(30, generator=g) + 0.5 for _ in range(4)] + [torch.zeros(30)]
    total, k, cos = sum_and_mean_pairwise_cosine(taus)
    pairs = [
        float(torch.nn.functional.cosine_similarity(taus[i], taus[j], dim=0)) if taus[i].any() and taus[j].any() else 0.0
        for i in range(5) for j in range(i + 1, 5)
    ]
    assert k == 5 and cos == pytest.approx(sum(pairs) / len(pairs), abs=1e-5)
    assert torch.allclose(total, sum(taus))


def test_model_stock_interpolates_average_toward_base():
    base = sd(w=[1.0, 1.0])
    m1, m2 = sd(w=[2.0, 1.0]), sd(w=[2.0, 2.0])  # τ1 = [1, 0], τ2 = [1, 1]: cos = 1/√2
    cos = 1 / math.sqrt(2)
    t = 2 * cos / (1 + cos)
    # θ = t·θ_avg + (1 − t)·θ_0 with θ_avg = [2, 1.5]
    assert close(merge("model_stock", [m1, m2], base)["w"], [1 + t, 1 + 0.5 * t])
    orthogonal = merge("model_stock", [sd(w=[2.0, 1.0]), sd(w=[1.0, 2.0])], base)
    assert close(orthogonal["w"], [1.0, 1.0])  # cos = 0 → t = 0 → the base


def test_option_values_are_validated():
    base, m = sd(w=[0.0]), sd(w=[1.0])
    with pytest.raises(MergeError, match=r"ties k must be in \(0, 1\]"):
        merge("ties", [m], base, k=1.5)
    with pytest.raises(MergeError, match=r"dare p must be in \[0, 1\)"):
        merge("dare", [m], base, p=1.0)
    with pytest.raises(MergeError, match="combine"):
        merge("dare", [m], base, combine="mean")
    with pytest.raises(MergeError, match="beta \\+ gamma must be < 1"):
        merge("breadcrumbs", [m], base, beta=0.9, gamma=0.2)
    with pytest.raises(MergeError, match="slerp t"):
        merge("slerp", [m, m], t=2.0)
    with pytest.raises(MergeError, match="2 weights for 3 models"):
        merge("interpolation", [m, m, m], weights=[1, 2])
    with pytest.raises(MergeError, match="invalid options"):
        merge("ties", [m], base, k="a lot")
