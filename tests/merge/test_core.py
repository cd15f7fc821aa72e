"""The merge driver: dispatch by name, identities, non-float buffers, streaming, error messages."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from fif.merge import (
    OPERATORS,
    DictSource,
    LinesOptions,
    MergeError,
    SafetensorsSource,
    apply_lines,
    iter_merge,
    merge,
    operator_names,
)

# Options under which merging N copies of θ (over a different base) must give θ back.
NEUTRAL = {
    "interpolation": {},
    "slerp": {},
    "task_arithmetic": {"lam": 1 / 3},
    "ties": {"k": 1.0},
    "dare": {"p": 0.0, "lam": 1 / 3},
    "breadcrumbs": {"beta": 0.0, "gamma": 0.0, "lam": 1 / 3},
    "magmax": {},
    "model_stock": {},
}


def toy_state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "visual.transformer.resblocks.0.attn.weight": torch.randn(4, 3, generator=g),
        "visual.transformer.resblocks.1.attn.weight": torch.randn(4, 3, generator=g),
        "visual.bn.running_mean": torch.randn(3, generator=g),
        "visual.bn.num_batches_tracked": torch.tensor(seed * 10),
        "logit_scale": torch.randn((), generator=g),
        "text.position_ids": torch.arange(5) + seed,
        "text.attn_mask": torch.full((3, 3), float("-inf")).triu(1),
    }


def num_models(op: str) -> int:
    return 2 if op == "slerp" else 3


def test_every_operator_is_covered():
    assert set(NEUTRAL) == set(operator_names())


def nearby(theta: dict[str, torch.Tensor], seed: int, eps: float = 1e-4) -> dict[str, torch.Tensor]:
    """θ plus tiny noise on its float tensors (not the -inf mask): unequal inputs, so merge()'s exact
    shortcut for identical inputs stays out of the way and the operator's own math is what is tested."""
    g = torch.Generator().manual_seed(1000 + seed)
    return {
        k: v + eps * torch.randn(v.shape, generator=g) if v.is_floating_point() and "mask" not in k else v.clone()
        for k, v in theta.items()
    }


@pytest.mark.parametrize("op", sorted(OPERATORS))
def test_identical_inputs_are_returned_exactly_as_copies(op):
    theta = toy_state(1)
    base = theta if OPERATORS[op].task_vectors else None
    out = merge(op, [theta] * num_models(op), base)
    assert out.keys() == theta.keys()
    assert all(torch.equal(out[k], theta[k]) for k in theta)
    assert all(out[k].data_ptr() != theta[k].data_ptr() for k in theta if theta[k].numel())  # copies


@pytest.mark.parametrize("op", sorted(OPERATORS))
def test_nearly_identical_models_merge_to_the_model(op):
    theta = toy_state(1)
    base = nearby(theta, 99) if OPERATORS[op].task_vectors else None  # τ_i = tiny noise
    out = merge(op, [nearby(theta, s) for s in range(num_models(op))], base, **NEUTRAL[op])
    for k in theta:
        if theta[k].is_floating_point() and "mask" not in k:
            assert torch.allclose(out[k], theta[k], atol=1e-3), k


@pytest.mark.parametrize("op", sorted(OPERATORS))
def test_nearly_identical_models_over_another_base_give_the_model_under_neutral_options(op):
    theta, base = toy_state(1), toy_state(2)
    models = [nearby(theta, s) for s in range(num_models(op))]  # not identical: no shortcut in weight mode
    out = merge(op, models, base if OPERATORS[op].task_vectors else None, **NEUTRAL[op])
    for k in theta:
        if theta[k].is_floating_point() and "mask" not in k:
            assert torch.allclose(out[k], theta[k], atol=1e-3), k


@pytest.mark.parametrize("op", sorted(OPERATORS))
def test_non_float_buffers_are_copied_from_the_base_or_first_model(op):
    models = [toy_state(s) for s in range(1, num_models(op) + 1)]
    base = toy_state(0) if OPERATORS[op].task_vectors else None
    out = merge(op, models, base)
    ref = base if base is not None else models[0]
    for k in ("visual.bn.num_batches_tracked", "text.position_ids"):
        assert out[k].dtype == ref[k].dtype and torch.equal(out[k], ref[k])
    assert torch.equal(out["text.attn_mask"], ref["text.attn_mask"])  # -inf stays -inf, never NaN


def test_copy_keys_are_not_merged():
    a, b = toy_state(1), toy_state(2)
    out = merge("interpolation", [a, b], copy_keys=["logit_scale"])
    assert torch.equal(out["logit_scale"], a["logit_scale"])
    assert not torch.equal(out["visual.bn.running_mean"], a["visual.bn.running_mean"])


def test_low_precision_inputs_keep_their_dtype():
    a = {"w": torch.tensor([1.0, 2.0], dtype=torch.bfloat16)}
    b = {"w": torch.tensor([3.0, 4.0], dtype=torch.bfloat16)}
    out = merge("interpolation", [a, b])
    assert out["w"].dtype == torch.bfloat16 and out["w"].tolist() == [2.0, 3.0]


def test_lines_scales_merged_task_vector_by_block_depth():
    base = {k: torch.zeros(2) for k in ("visual.transformer.resblocks.0.w", "visual.transformer.resblocks.1.w",
                                         "visual.transformer.resblocks.2.w", "transformer.resblocks.0.w",
                                         "transformer.resblocks.1.w", "logit_scale")}
    model = {k: torch.ones(2) for k in base}
    out = merge("task_arithmetic", [model], base, lines=LinesOptions(alpha=0.2, beta=0.6))
    expected = {"visual.transformer.resblocks.0.w": 0.2, "visual.transformer.resblocks.1.w": 0.5,
                "visual.transformer.resblocks.2.w": 0.8, "transformer.resblocks.0.w": 0.2,
                "transformer.resblocks.1.w": 0.8, "logit_scale": 0.2}
    for k, s in expected.items():
        assert torch.allclose(out[k], torch.full((2,), s)), k
    ties = merge("ties", [model], base, k=1.0, lam=0.5, lines={"alpha": 0.2, "beta": 0.6})
    assert torch.allclose(ties["visual.transformer.resblocks.2.w"], torch.full((2,), 0.4))
    assert torch.allclose(apply_lines(model, base, 0.2, 0.6)["transformer.resblocks.1.w"], torch.full((2,), 0.8))


def test_files_and_dicts_give_the_same_merge(tmp_path):
    states = [toy_state(s) for s in range(4)]
    paths = []
    for i, s in enumerate(states):
        paths.append(tmp_path / f"m{i}.safetensors")
        save_file(s, str(paths[-1]))
    from_files = merge("ties", paths[1:], paths[0], k=0.5)
    from_dicts = merge("ties", states[1:], states[0], k=0.5)
    assert all(torch.equal(from_files[k], from_dicts[k]) for k in from_dicts)
    assert isinstance(SafetensorsSource(paths[0]).spec("logit_scale").shape, tuple)


class CountingSource(DictSource):
    """Records every key it is asked for."""

    def __init__(self, state, log):
        super().__init__(state, name="counting")
        self.log = log

    def get(self, key):
        self.log.append(key)
        return super().get(key)


def test_merge_streams_one_key_at_a_time():
    fetched: list[str] = []
    models = [CountingSource(toy_state(s), fetched) for s in (1, 2, 3)]
    stream = iter_merge("interpolation", models)
    assert fetched == []  # validation reads headers only
    key, _ = next(stream)
    assert set(fetched) == {key}
    key2, _ = next(stream)
    assert set(fetched) == {key, key2}


class FreshSource(DictSource):
    """Returns a fresh copy per get and counts how many of its tensors are alive at once."""

    alive = 0
    peak = 0

    def get(self, key):
        import weakref

        t = super().get(key).clone()
        FreshSource.alive += 1
        FreshSource.peak = max(FreshSource.peak, FreshSource.alive)
        weakref.finalize(t, FreshSource._release)
        return t

    @staticmethod
    def _release():
        FreshSource.alive -= 1


@pytest.mark.parametrize("op", ["interpolation", "ties", "dare", "breadcrumbs", "magmax", "model_stock"])
def test_a_key_folds_in_one_input_at_a_time(op):
    FreshSource.alive = FreshSource.peak = 0
    models = [FreshSource(toy_state(s), name=f"m{s}") for s in range(1, 11)]
    base = FreshSource(toy_state(0), name="base") if OPERATORS[op].task_vectors else None
    merge(op, models, base)
    assert FreshSource.peak <= 3  # base or first model, the previous input, the next one: not all ten


# --- error messages ---------------------------------------------------------------------------


def test_unknown_operator_lists_valid_ones():
    with pytest.raises(MergeError, match=r"unknown merge operator 'tie'; did you mean 'ties'\?.*Valid: breadcrumbs, dare"):
        merge("tie", [toy_state(1)])


def test_unknown_option_lists_valid_ones():
    with pytest.raises(MergeError, match=r"unknown option 'kk' \(did you mean 'k'\?\) for merge operator 'ties'. Valid options: k, lam"):
        merge("ties", [toy_state(1)], toy_state(0), kk=0.3)
    with pytest.raises(MergeError, match=r"Valid options: \(none\)"):
        merge("model_stock", [toy_state(1), toy_state(2)], toy_state(0), lam=1.0)


def test_key_mismatch_names_the_keys():
    a, b = toy_state(1), toy_state(2)
    del b["logit_scale"]
    b["extra.weight"] = torch.zeros(1)
    with pytest.raises(MergeError, match=r"models\[1\] vs models\[0\]: missing 'logit_scale'; unexpected 'extra.weight'"):
        merge("interpolation", [a, b])


def test_shape_mismatch_names_key_and_shapes():
    a, b = toy_state(1), toy_state(2)
    b["visual.bn.running_mean"] = torch.zeros(4)
    with pytest.raises(MergeError, match=r"'visual.bn.running_mean': \(3,\) in models\[0\] but \(4,\) in models\[1\]"):
        merge("interpolation", [a, b])


def test_base_rules_and_model_counts():
    a, b, c = toy_state(1), toy_state(2), toy_state(3)
    with pytest.raises(MergeError, match="give the base"):
        merge("ties", [a, b])
    with pytest.raises(MergeError, match="takes no base"):
        merge("slerp", [a, b], base=c)
    with pytest.raises(MergeError, match="exactly 2 models, got 3"):
        merge("slerp", [a, b, c])
    with pytest.raises(MergeError, match="at least 2 models, got 1"):
        merge("model_stock", [a], base=c)
    with pytest.raises(MergeError, match="LiNeS scales task vectors"):
        merge("interpolation", [a, b], lines=LinesOptions())
    with pytest.raises(MergeError, match="list of state dicts"):
        merge("interpolation", a)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(MergeError, match="nope.safetensors' does not exist"):
        merge("interpolation", [tmp_path / "nope.safetensors"])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(MergeError, match="cannot read .* as a safetensors file"):
        merge("interpolation", [bad])
