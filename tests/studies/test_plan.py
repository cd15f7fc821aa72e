"""fif.studies.plan: expanding a study into runs (multiples, names, order, overrides), the study folder, the
models study's checks and equal compute."""

from __future__ import annotations

import pytest

from fif.core.typed import ConfigError
from fif.runner.sweep import read_sweep
from fif.studies import plan as plan_mod
from fif.studies.plan import (
    equal_compute_mafs,
    expand_study,
    load_study,
    read_plan,
    resolve_value,
    write_study,
)
from fif.studies.spec import parse_study
from study_fakes import SMALL


def test_expansion_resolves_multiples_and_orders_runs_seed_by_seed():
    plan, sweep = expand_study(parse_study(SMALL), "mini")
    assert [r.name for r in plan.runs] == [
        "ft_lr=0.0001_seed=0", "ft_lr=0.0004_seed=0", "ewc_lr=0.0002_strength=1e4_seed=0",
        "ewc_lr=0.0002_strength=1e5_seed=0", "ft_lr=0.0001_seed=1", "ft_lr=0.0004_seed=1",
        "ewc_lr=0.0002_strength=1e4_seed=1", "ewc_lr=0.0002_strength=1e5_seed=1"]
    run = sweep.run("ewc_lr=0.0002_strength=1e4_seed=1")
    assert run.overrides == ["method.name=ewc", "budget.ft_steps=120", "train.lr=0.0002", "method.strength=1e4",
                             "run.seed=1"]
    assert sweep.overrides == ["merge.preset=none"] and plan.tuning == "validation"
    assert plan.validation.overrides == ["data.options.seed=1000"]
    assert plan.runs[2].point == {"train.lr": "0.0002", "method.strength": "1e4"}


def test_user_overrides_set_the_base_of_multiples_but_cannot_clash():
    plan, sweep = expand_study(parse_study(SMALL), "mini", ["train.lr=1e-3", "stream.tasks=3"])
    assert plan.runs[0].point == {"train.lr": "0.0005"} and "stream.tasks=3" in sweep.overrides
    with pytest.raises(ConfigError, match="method.name is set by variant ft"):
        expand_study(parse_study(SMALL), "mini", ["method.name=lora"])
    with pytest.raises(ConfigError, match="method.strength is set by the tuning grid of ewc"):
        expand_study(parse_study(SMALL), "mini", ["method.strength=3"])
    with pytest.raises(ConfigError, match="is a multiple, but stream.ordering resolves to 'random'"):
        resolve_value("stream.ordering", "x2", {"stream": {"ordering": "random"}}, "tune")
    assert resolve_value("budget.ft_steps", "x0.5", {"budget": {"ft_steps": 721.0}}, "w") == "360"


def test_quick_grid_and_untuned_studies():
    plan, sweep = expand_study(load_study("merging"), "mini")
    assert len(plan.runs) == 21 and "ema_merge_lr=0.0004_alpha=0.3_seed=2" in [r.name for r in plan.runs]
    plan, sweep = expand_study(load_study("merging"), "mini", quick=True)
    assert plan.quick and len(plan.runs) == 8 and plan.variants() == ["finetune", "ema_merge"]
    assert "budget.ft_steps=60" in sweep.overrides and plan.seeds() == [0, 1]
    plan, _ = expand_study(load_study("mixtures"), "mini")
    assert plan.tuning == "fixed" and len(plan.runs) == 12 and plan.runs[0].name == "update_only_seed=0"
    plan, sweep = expand_study(load_study("compute"), "mini", seeds=[5])
    assert sweep.run("ema_merge_budget2_seed=5").overrides[1] == "budget.ft_steps=480"
    plan, _ = expand_study(load_study("merging"), "fif")
    assert plan.tuning == "test" and plan.validation is None  # FiF has no held-out draw: the front, flagged


def test_every_named_study_expands_on_both_presets(monkeypatch):
    monkeypatch.setattr(plan_mod, "equal_compute_mafs", lambda arch, batch, steps: 1e15)
    for name in ("methods", "merging", "schedules", "mixtures", "orderings", "compute", "init_deploy"):
        for preset in ("mini", "fif"):
            plan, sweep = expand_study(load_study(name, preset), preset)
            assert len(sweep.runs) == len(plan.runs) >= 12, (name, preset)
    plan, sweep = expand_study(load_study("models", "fif"), "fif")
    assert plan.variants() == ["vit_b32", "vit_b16", "vit_l14"] and "budget.mafs=1e+15" in sweep.overrides


def test_models_on_mini_scales_the_resnet_and_needs_two_sizes(monkeypatch):
    # The size ladder is one family: the ViT is another design, not a size of the default.
    assert plan_mod.mini_archs() == ["fif-mini-rn32", "fif-mini-rn32-w2"]
    assert load_study("models", "mini").variant("rn32-w2").overrides[0] == "model.arch=fif-mini-rn32-w2"
    monkeypatch.setattr(plan_mod, "mini_archs", lambda: ["fif-mini-rn32"])
    with pytest.raises(ConfigError, match="needs at least two architectures; the mini world has fif-mini-rn32"):
        load_study("models", "mini")


def test_equal_compute_is_the_fine_tuning_budget_of_the_first_model():
    # the default mini run's budget, 240 steps of batch 128 of fif-mini-rn32 (6.87 GFLOPs a step), is 1.648e12 MAFs
    assert equal_compute_mafs("fif-mini-rn32", 128, 240) == pytest.approx(1.6481e12, rel=1e-3)


def test_study_folder_is_idempotent_and_guarded(tmp_path):
    plan, sweep = expand_study(parse_study(SMALL), "mini")
    out = write_study(plan, sweep, tmp_path / "s")
    assert read_plan(out).to_dict() == plan.to_dict() and len(read_sweep(out).runs) == 8
    assert "-m fif study --out" in (out / "commands.txt").read_text()
    write_study(plan, sweep, out)  # the same study again: fine
    other, other_sweep = expand_study(parse_study(SMALL), "mini", seeds=[7])
    with pytest.raises(FileExistsError, match="a different study"):
        write_study(other, other_sweep, out)
    with pytest.raises(FileNotFoundError, match="not a study folder"):
        read_plan(tmp_path)
