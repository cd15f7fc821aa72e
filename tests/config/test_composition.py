"""A method that owns its start weights vs a merge preset that loads merged weights at task start: the
precedence of fif.config.composition, checked on the config and through whole runs."""

from __future__ import annotations

import pytest
import torch

import fif
import fif.runner.task
from fif.config import MERGE_PRESETS, load_config
from fif.config.composition import composition_problems, merge_for_method, start_weights_owner
from fif.core.typed import ConfigError
from fif.merge import merge
from fif.methods import registered_methods
from small_run import SMALL_RUN

METHODS = sorted(registered_methods())
PRESETS = sorted(MERGE_PRESETS)
OWNERS = {"gdumb", "ewc", "si", "mas", "lwf", "zscl"}  # their own start weights (θ0 restart, anchors, teachers)
ADAPTERS = {"lora", "dora", "vera"}  # train adapters, deploy them merged into the base weights
TINY = [
    *SMALL_RUN,
    "train.log_every=1",
    "eval.min_samples=10",
    "eval.datasets=[mini_digits]",
    "run.threads=1",
    (
        "data.options={pool_size: 100, train_per_class: 4, test_per_class: 2, eval_size: 20, retrieval_train: 10, "
        "retrieval_test: 10}"
    ),
]
# Cheap options so every method runs in the tiny world (small importance passes, a small memory).
OPTIONS = {
    "ewc": ["method.fisher_samples=16", "method.fisher_batch_size=8"],
    "mas": ["method.importance_samples=16", "method.importance_batch_size=8"],
    "gdumb": ["method.memory_size=16"],
    "zscl": ["method.reference_size=16", "method.reference_per_step=8"],
    "lora": ["method.rank=2"], "dora": ["method.rank=2"], "vera": ["method.rank=2"], "galore": ["method.rank=2"],
}


def test_owners_are_declared_and_adapters_detected():
    assert {m for m in METHODS if start_weights_owner(m)} == OWNERS | ADAPTERS
    assert "θ0" in start_weights_owner("gdumb") and "anchor" in start_weights_owner("ewc")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("preset", PRESETS)
def test_every_method_validates_with_every_preset_or_is_refused_with_the_fix(method, preset):
    overrides = [f"method.name={method}", f"merge.preset={preset}", *OPTIONS.get(method, [])]
    if method in ADAPTERS and preset == "online_ema":
        with pytest.raises(ConfigError, match="online_ema averages the weights being trained.*merge.preset=ema_merge"):
            load_config("mini", overrides)
        return
    cfg = load_config("mini", overrides)
    used, note = merge_for_method(cfg.merge, method)
    owns = method in OWNERS | ADAPTERS
    assert used.init == ("last" if owns else MERGE_PRESETS[preset]["init"])
    assert used.deploy == MERGE_PRESETS[preset]["deploy"]  # the deploy side still merges
    assert (note is not None) == (owns and MERGE_PRESETS[preset]["init"] != "last")


@pytest.mark.parametrize("method", sorted(OWNERS | ADAPTERS))
def test_an_explicit_merged_init_is_refused_for_a_method_that_owns_its_start(method):
    with pytest.raises(ConfigError, match=rf"merge.init=zeroshot: method '{method}' owns .* or set merge.init=last"):
        load_config("mini", [f"method.name={method}", "merge.init=zeroshot", "merge.deploy=ema"])
    load_config("mini", [f"method.name={method}", "merge.init=last", "merge.deploy=ema"])
    cfg = load_config("mini", ["method.name=finetune", "merge.init=zeroshot"])
    assert composition_problems(cfg.merge, "finetune") == []


def test_the_mini_preset_default_and_docs_first_example_validate():
    cfg = load_config("mini", ["method.name=lora", "method.rank=64"])  # docs/methods.md's first example
    assert cfg.merge.preset == "ema_merge"
    assert merge_for_method(cfg.merge, "lora")[0].init == "last"


# ----------------------------------------------------------------------------------------------
# Through the runner


def held_reference(method) -> dict | None:
    """What the method holds to stay near at the task's start: EWC/SI/MAS's anchor θ*, LwF's teacher."""
    if method.name in ("ewc", "si", "mas") and method.state.anchor is not None:
        return {k: v.clone() for k, v in method.state.anchor.items()}
    if method.name == "lwf":
        return {k: v.clone() for k, v in method.teacher.module.state_dict().items()}
    return None


def starts_and_ends(monkeypatch) -> list[tuple[dict, dict, dict | None]]:
    calls = []
    original = fif.runner.task.train_task

    def spy(model, method, *args, **kwargs):
        start = {k: v.clone() for k, v in model.state_dict().items()}
        held = held_reference(method)
        out = original(model, method, *args, **kwargs)
        calls.append((start, {k: v.clone() for k, v in model.state_dict().items()}, held))
        return out

    monkeypatch.setattr(fif.runner.task, "train_task", spy)
    return calls


def equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def check_run(tmp_path, monkeypatch, method: str, preset: str) -> None:
    """Run two tasks; task 2 must start where the method (owners) or the preset (everyone else) says."""
    calls = starts_and_ends(monkeypatch)
    overrides = [*TINY, f"method.name={method}", f"merge.preset={preset}", *OPTIONS.get(method, [])]
    if method in ADAPTERS and preset == "online_ema":
        with pytest.raises(ConfigError, match="online_ema"):
            load_config("mini", overrides)
        return
    result = fif.run(load_config("mini", overrides), out_dir=tmp_path / f"{method}-{preset}")
    assert (result.out_dir / "final.safetensors").is_file()
    (s0, e0, _), (s1, _, held) = calls
    assert not equal(e0, s0)  # task 1 trained
    init = MERGE_PRESETS[preset]["init"]
    if method == "gdumb":
        assert equal(s1, s0)  # GDumb's θ0 restart, whatever the preset
    elif method in OWNERS | ADAPTERS and method != "zscl":
        assert equal(s1, e0)  # anchors / teacher / adapters: the next task starts where the last one ended
        if held is not None:  # and θ* (EWC, SI, MAS) or the teacher (LwF) is exactly that start
            assert all(torch.equal(held[k], s1[k]) for k in held)
    elif method in OWNERS:
        pass  # zscl: its ensemble option decides (none by default: continues), checked in its own tests
    elif init == "zeroshot":
        assert equal(s1, s0)
    elif init == "ema":
        assert equal(s1, merge("interpolation", [e0, s0]))
    elif init == "last":
        assert equal(s1, e0)
    else:  # online_ema: somewhere between θ0 and the end of task 1
        assert not equal(s1, e0) and not equal(s1, s0)


FAST = [("gdumb", "ema_merge"), ("ewc", "zs_merge"), ("lora", "ema_merge"), ("si", "online_ema")]


@pytest.mark.parametrize("method, preset", FAST)
def test_start_weights_through_the_runner(tmp_path, monkeypatch, method, preset):
    check_run(tmp_path, monkeypatch, method, preset)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("preset", PRESETS)
def test_start_weights_through_the_runner_every_method_and_preset(tmp_path, monkeypatch, method, preset):
    if (method, preset) in FAST:
        pytest.skip("in the fast subset")
    check_run(tmp_path, monkeypatch, method, preset)
