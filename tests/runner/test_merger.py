"""Temporal merging inside runs (the ``merge`` config section), its history on disk, and `fif merge`.

Unit tests drive :class:`TemporalMerger` with a two-layer module; the end-to-end runs use a random-init
tiny CLIP on a small mini benchmark and record, around ``train_task``, the weights every task starts
from and ends with, so what a merge should give can be computed by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import fif
import fif.runner.stream
import fif.runner.task
from fif.cli import CliError
from fif.cli import merge as merge_cli
from fif.config import MERGE_PRESETS, MergeConfig, load_config
from fif.core.typed import ConfigError
from fif.merge import history_weights, merge
from fif.runner.merger import ZEROSHOT_FILE, TemporalMerger, history_file
from small_run import SMALL_RUN

SMALL = [  # the runner tests' small run, smaller still, on one thread
    *SMALL_RUN,
    "merge.preset=none",  # the mini preset's recipe is ema_merge; these runs start from no merging
    "eval.min_samples=20",
    "eval.datasets=[mini_digits,mini_colors]",
    "run.threads=1",
    "data.options={pool_size: 200, train_per_class: 8, test_per_class: 4, eval_size: 40, retrieval_train: 20, "
    "retrieval_test: 20}",
]


# ----------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize("preset", sorted(MERGE_PRESETS))
def test_every_merge_preset_loads_and_sets_its_axes(preset):
    cfg = load_config("mini", [f"merge.preset={preset}"])
    assert (cfg.merge.init, cfg.merge.deploy) == (MERGE_PRESETS[preset]["init"], MERGE_PRESETS[preset]["deploy"])


def test_explicit_keys_win_over_the_merge_preset_and_survive_a_reload():
    cfg = load_config("mini", ["merge.preset=ema_merge", "merge.deploy=all", "merge.weights=sqrt"])
    assert (cfg.merge.init, cfg.merge.deploy, cfg.merge.weights) == ("ema", "all", "sqrt")
    again = load_config(None, base=cfg.to_dict())  # a run's config.yaml, as resume reads it
    assert again.merge == cfg.merge
    recipe = load_config("mini").merge  # the mini preset's recommended recipe: fine-tuning + EMA merge
    assert (recipe.preset, recipe.init, recipe.deploy) == ("ema_merge", "ema", "ema")
    plain = load_config("mini", ["merge.preset=none"]).merge
    assert (plain.init, plain.deploy) == ("last", "last")


def test_merge_config_errors_come_all_at_once_with_nearest_names():
    with pytest.raises(ConfigError) as e:
        load_config("mini", [
            "merge.init=emma", "merge.deploy=al", "merge.operator=ties", "merge.options={kk: 0.1}",
            "merge.weights=linear", "merge.alpha=2", "merge.ema_decay=-1",
        ])
    text = str(e.value)
    for part in ("merge.init: 'emma'", "'ema'", "merge.deploy: 'al'", "'all'", "did you mean 'k'",
                 "merge.weights='linear'", "merge.alpha: 2.0", "merge.ema_decay: -1.0"):
        assert part in text, part
    with pytest.raises(ConfigError, match="did you mean ema_merge"):
        load_config("mini", ["merge.preset=ema_merg"])
    with pytest.raises(ConfigError, match="merge.options.weights: set by the merge axes"):
        load_config("mini", ["merge.options={weights: [1, 2]}"])
    with pytest.raises(ConfigError, match="at most 2 models"):
        load_config("mini", ["merge.operator=slerp", "merge.deploy=all"])
    with pytest.raises(ConfigError, match="LiNeS scales task vectors"):
        load_config("mini", ["merge.lines={alpha: 0.5, beta: 0.5}"])
    load_config("mini", ["merge.operator=ties", "merge.lines={alpha: 0.5, beta: 0.5}", "merge.deploy=all"])
    with pytest.raises(ConfigError, match="merge.include_zero_shot: merges θ0 into init/deploy=all"):
        load_config("mini", ["merge.include_zero_shot=true"])
    with pytest.raises(ConfigError, match="schedule 'cubic' is unknown"):
        load_config("mini", ["merge.operator=ties", "merge.lines={alpha: 0.5, beta: 0.5, schedule: cubic}", "merge.deploy=all"])
    load_config("mini", ["merge.operator=ties", "merge.lines={alpha: 0.5, beta: 0.5, schedule: sqrt}", "merge.deploy=all"])


# ----------------------------------------------------------------------------------------------
# TemporalMerger on a small module


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def perturb_(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Move every float parameter and buffer a random step (a stand-in for a task); return a copy."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g))
            else:
                t.add_(1)
    return {k: v.clone() for k, v in model.state_dict().items()}


def make(tmp_path: Path, model: nn.Module, deployed=lambda: None, **fields) -> TemporalMerger:
    return TemporalMerger(MergeConfig(**fields), tmp_path / "history", model, deployed, {"arch": "toy"})


def held_state_dicts(merger: TemporalMerger) -> int:
    """How many state dicts of tensors the merger keeps between calls."""
    held = [v for v in vars(merger).values() if isinstance(v, dict) and v and all(isinstance(t, torch.Tensor) for t in v.values())]
    cache = merger._cache
    return len(held) + (cache is not None)


def test_no_merging_holds_nothing_writes_nothing_and_never_asks_the_method(tmp_path):
    model = small_model()

    def deployed():
        raise AssertionError("the default config must not compute deploy weights")

    m = make(tmp_path, model, deployed)
    assert not m.merges and m.training_weights() is None and m.step_hook(model) is None
    m.end_task(0, deployed)
    assert m.deploy_weights(deployed) is None and m.training_weights() is None
    assert not (tmp_path / "history").exists() and held_state_dicts(m) == 0
    assert m.state_dict() == {"tasks_done": 1, "running": None, "online": None}


def mix(a: dict, b: dict, wa: float) -> dict:
    """wa·a + (1 − wa)·b for float tensors; integers follow ``a`` (the first model of a merge)."""
    return {k: wa * a[k] + (1 - wa) * b[k] if a[k].is_floating_point() else a[k] for k in a}


def ema_step(avg: dict, new: dict, decay: float) -> dict:
    """decay·avg + (1 − decay)·new for float tensors; integers follow ``new``."""
    return {k: decay * avg[k] + (1 - decay) * new[k] if new[k].is_floating_point() else new[k] for k in avg}


@pytest.mark.parametrize("deploy", ["last", "ema", "all", "last_zeroshot", "online_ema"])
@pytest.mark.parametrize("init", ["zeroshot", "last", "ema", "all", "online_ema"])
def test_every_init_deploy_combination_does_what_it_says(tmp_path, init, deploy):
    model = small_model()
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    m = make(tmp_path, model, init=init, deploy=deploy, alpha=0.3, ema_decay=0.6)
    online, ends = dict(theta0), []
    for task in range(2):
        start = m.training_weights()
        if task == 1:
            expected = {"zeroshot": theta0, "last": None, "ema": mix(ends[0], theta0, 0.3), "all": ends[0],
                        "online_ema": online}[init]
            if expected is None:
                assert start is None
            else:
                for k in expected:
                    torch.testing.assert_close(start[k], expected[k], rtol=0, atol=1e-6)
                model.load_state_dict(start)
        else:
            assert start is None
        hook = m.step_hook(model)
        assert (hook is not None) == ("online_ema" in (init, deploy))
        for step in range(2):
            theta = perturb_(model, 10 * task + step)
            online = ema_step(online, theta, 0.6)
            if hook is not None:
                hook()
        ends.append({k: v.clone() for k, v in model.state_dict().items()})
        m.end_task(task, model.state_dict)
    got = m.deploy_weights(model.state_dict)
    r2 = mix(ends[1], mix(ends[0], theta0, 0.3), 0.3)
    expected = {"last": None, "ema": r2, "all": mix(ends[0], ends[1], 0.5), "last_zeroshot": mix(ends[1], theta0, 0.3),
                "online_ema": online}[deploy]
    if expected is None:
        assert got is None
    else:
        for k in expected:
            torch.testing.assert_close(got[k], expected[k], rtol=1e-6, atol=1e-6)
    assert held_state_dicts(m) <= 2


def test_ema_merge_chain_by_hand(tmp_path):
    model = small_model()
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    m = make(tmp_path, model, preset="ema_merge", alpha=0.25)
    assert m.deploy_weights(dict) is None and m.training_weights() is None  # before any task: the model itself
    e1 = perturb_(model, 1)
    m.end_task(0, model.state_dict)
    r1 = {k: 0.25 * e1[k] + 0.75 * theta0[k] for k in e1 if e1[k].is_floating_point()}
    start = m.training_weights()
    for k, v in r1.items():
        torch.testing.assert_close(start[k], v, rtol=0, atol=1e-6)
    assert torch.equal(start["1.num_batches_tracked"], e1["1.num_batches_tracked"])  # ints follow the newest
    model.load_state_dict(start)
    e2 = perturb_(model, 2)
    m.end_task(1, model.state_dict)
    deployed = m.deploy_weights(model.state_dict)
    for k, v in r1.items():
        torch.testing.assert_close(deployed[k], 0.25 * e2[k] + 0.75 * v, rtol=0, atol=1e-6)
    assert held_state_dicts(m) == 1 and not (tmp_path / "history").exists()  # interpolation needs no θ0 file


def test_zeroshot_init_and_all_deploy_stream_from_history_files(tmp_path):
    model = small_model()
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    m = make(tmp_path, model, init="zeroshot", deploy="all", weights="uniform")
    history = tmp_path / "history"
    assert (history / ZEROSHOT_FILE).is_file()
    ends = []
    for task in range(10):
        start = m.training_weights()
        if task == 0:
            assert start is None
        else:
            assert all(torch.equal(start[k], theta0[k]) for k in theta0)
            model.load_state_dict(start)
        ends.append(perturb_(model, task))
        m.end_task(task, model.state_dict)
        assert held_state_dicts(m) == 0  # nothing in memory between tasks: θ0 and checkpoints are files
        deployed = m.deploy_weights(model.state_dict)
        assert held_state_dicts(m) == 1  # the deploy merge, cached until the next task starts
    files = sorted(p.name for p in history.iterdir())
    assert files == sorted([ZEROSHOT_FILE] + [history_file(t) for t in range(10)])
    for t, end in enumerate(ends):
        saved = load_file(str(history / history_file(t)))
        assert all(torch.equal(saved[k], end[k]) for k in end)
    mean = {k: sum(e[k] for e in ends) / 10 for k in theta0 if theta0[k].is_floating_point()}
    for k, v in mean.items():
        torch.testing.assert_close(deployed[k], v, rtol=0, atol=1e-5)


def test_online_ema_follows_the_per_step_formula_without_copies(tmp_path):
    model = small_model()
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    m = make(tmp_path, model, preset="online_ema", ema_decay=0.9)
    hook = m.step_hook(model)
    expected = {k: v.clone() for k, v in theta0.items()}
    for step in range(5):
        theta = perturb_(model, step)
        hook()
        for k in expected:
            expected[k] = 0.9 * expected[k] + 0.1 * theta[k] if theta[k].is_floating_point() else theta[k]
    m.end_task(0, model.state_dict)
    out = m.deploy_weights(model.state_dict)
    for k, v in expected.items():
        torch.testing.assert_close(out[k], v, rtol=0, atol=1e-6)
    assert held_state_dicts(m) == 1


def test_ft_merge_and_task_vector_operators_read_theta0_from_disk(tmp_path):
    model = small_model()
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    m = make(tmp_path / "a", model, preset="ft_merge", alpha=0.5)
    end = perturb_(model, 3)
    m.end_task(0, model.state_dict)
    got = m.deploy_weights(model.state_dict)
    assert all(torch.equal(got[k], merge("interpolation", [end, theta0])[k]) for k in end)
    model.load_state_dict(theta0)
    t = make(tmp_path / "b", model, deploy="last_zeroshot", operator="task_arithmetic", options={"lam": 0.5})
    perturb_(model, 3)
    t.end_task(0, model.state_dict)
    got = t.deploy_weights(model.state_dict)
    for k in end:
        if end[k].is_floating_point():
            torch.testing.assert_close(got[k], theta0[k] + 0.5 * (end[k] - theta0[k]), rtol=0, atol=1e-6)


def test_offline_merge_weights_and_model_stock_with_one_checkpoint(tmp_path):
    model = small_model()
    m = make(tmp_path / "a", model, preset="offline_merge", weights="linear")
    ends = []
    for task in range(3):
        ends.append(perturb_(model, task))
        m.end_task(task, model.state_dict)
    got = m.deploy_weights(model.state_dict)
    w = history_weights("linear", 3)
    for k in got:
        if got[k].is_floating_point():
            torch.testing.assert_close(got[k], sum(wi * e[k] for wi, e in zip(w, ends)), rtol=0, atol=1e-5)
    stock = make(tmp_path / "b", small_model(), deploy="all", operator="model_stock")
    model = small_model()
    one = perturb_(model, 7)
    stock.end_task(0, model.state_dict)
    assert all(torch.equal(stock.deploy_weights(dict)[k], one[k]) for k in one)


def test_state_round_trip_and_mismatches(tmp_path):
    model = small_model()
    m = make(tmp_path, model, init="ema", deploy="online_ema")
    m.step_hook(model)()
    perturb_(model, 1)
    m.end_task(0, model.state_dict)
    assert held_state_dicts(m) == 2  # the running merge and the online EMA, nothing else
    state = m.state_dict()
    other = make(tmp_path, small_model(), init="ema", deploy="online_ema")
    other.load_state_dict({k: ({n: t.clone() for n, t in v.items()} if isinstance(v, dict) else v) for k, v in state.items()})
    assert other.tasks_done == 1
    assert all(torch.equal(other.running[k], m.running[k]) and torch.equal(other.online[k], m.online[k]) for k in m.running)
    with pytest.raises(ValueError, match="lacks the online merge"):
        other.load_state_dict({**state, "online": None})
    allm = make(tmp_path / "c", small_model(), deploy="all")
    with pytest.raises(ValueError, match="history incomplete"):
        allm.load_state_dict({"tasks_done": 2, "running": None, "online": None})


def test_training_from_merges_needs_a_method_that_trains_its_deployed_weights(tmp_path):
    model = small_model()
    adapter_weights = lambda: {"0.weight": torch.zeros(4, 3)}  # noqa: E731  (a plain architecture of other keys)
    with pytest.raises(ConfigError, match="merge.init=ema loads merged weights"):
        make(tmp_path, model, adapter_weights, init="ema")
    with pytest.raises(ConfigError, match="online_ema"):
        make(tmp_path, model, adapter_weights, deploy="online_ema")
    m = make(tmp_path, model, adapter_weights, deploy="ema")  # deploy-side merges work in deploy space
    assert set(m.running) == {"0.weight"}


# ----------------------------------------------------------------------------------------------
# Whole runs


@pytest.fixture
def recorded(monkeypatch):
    """Every task's start and end weights (fresh task starts only), recorded around ``train_task``."""
    calls = []
    original = fif.runner.task.train_task

    def spy(model, *args, **kwargs):
        start = {k: v.clone() for k, v in model.state_dict().items()}
        log = original(model, *args, **kwargs)
        calls.append((start, {k: v.clone() for k, v in model.state_dict().items()}))
        return log

    monkeypatch.setattr(fif.runner.task, "train_task", spy)
    return calls


def run(tmp_path: Path, name: str, *overrides: str):
    return fif.run(load_config("mini", [*SMALL, *overrides]), out_dir=tmp_path / name)


def final(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final.safetensors"))


def test_default_equals_no_merging_and_writes_no_history(tmp_path, recorded):
    plain = run(tmp_path, "plain")
    assert not (plain.out_dir / "history").exists()
    end = recorded[-1][1]
    assert all(torch.equal(final(plain.out_dir)[k], end[k]) for k in end)  # deploy = the last weights
    # Naming an operator without merging axes changes nothing; save_history only adds files.
    same = run(tmp_path, "same", "merge.operator=ties", "merge.save_history=true")
    assert (same.out_dir / "summary.json").read_text() == (plain.out_dir / "summary.json").read_text()
    assert (same.out_dir / "final.safetensors").read_bytes() == (plain.out_dir / "final.safetensors").read_bytes()
    history = sorted(p.name for p in (same.out_dir / "history").iterdir())
    assert history == sorted([ZEROSHOT_FILE, history_file(0), history_file(1)])


def test_zs_merge_run_trains_every_task_from_theta0_and_deploys_the_unrolled_merge(tmp_path, recorded):
    result = run(tmp_path, "zs", "merge.preset=zs_merge")
    (s0, e0), (s1, e1) = recorded
    assert all(torch.equal(s1[k], s0[k]) for k in s0)  # task 2 started from θ0, not from task 1's end
    # unrolled: r ← θ0; r ← ½θ_1 + ½r; r ← ½θ_2 + ½r, i.e. ½θ_2 + ¼θ_1 + ¼θ0 (not the mean of θ_1, θ_2)
    unrolled = merge("interpolation", [e1, merge("interpolation", [e0, s0])])
    got = final(result.out_dir)
    for k in unrolled:
        if unrolled[k].is_floating_point():
            torch.testing.assert_close(got[k], 0.5 * e1[k] + 0.25 * e0[k] + 0.25 * s0[k], rtol=1e-5, atol=1e-6)
    assert all(torch.equal(got[k], unrolled[k]) for k in unrolled)


def test_offline_merge_run_trains_every_task_from_theta0_and_deploys_one_merge(tmp_path, recorded):
    result = run(tmp_path, "off", "merge.preset=offline_merge", "merge.weights=quadratic")
    (s0, e0), (s1, e1) = recorded
    assert all(torch.equal(s1[k], s0[k]) for k in s0)  # task 2 started from θ0, not from task 1's end
    got = final(result.out_dir)
    for k in e0:
        if e0[k].is_floating_point():  # quadratic weights 1, 4 over two checkpoints
            torch.testing.assert_close(got[k], 0.2 * e0[k] + 0.8 * e1[k], rtol=1e-5, atol=1e-6)
    history = result.out_dir / "history"
    assert all(torch.equal(load_file(str(history / history_file(0)))[k], e0[k]) for k in e0)
    with_zs = run(tmp_path, "off0", "merge.preset=offline_merge", "merge.weights=linear_reversed",
                  "merge.include_zero_shot=true")
    got = final(with_zs.out_dir)
    (z0, f0), (_, f1) = recorded[2:]
    for k in f0:
        if f0[k].is_floating_point():  # θ0 the oldest of three: reversed linear weights 3, 2, 1
            torch.testing.assert_close(got[k], (3 * z0[k] + 2 * f0[k] + f1[k]) / 6, rtol=1e-5, atol=1e-6)


def test_ft_merge_run_deploys_merge_of_latest_and_theta0_exactly(tmp_path, recorded):
    result = run(tmp_path, "ft", "merge.preset=ft_merge")
    (s0, _), (s1, e1) = recorded
    assert not all(torch.equal(s1[k], s0[k]) for k in s0)  # trains continually
    expected = merge("interpolation", [e1, s0], weights=[0.5, 0.5])
    assert all(torch.equal(final(result.out_dir)[k], expected[k]) for k in expected)
    trajectory = json.loads((result.out_dir / "summary.json").read_text())["trajectory"]
    assert [p["task"] for p in trajectory] == [-1, 0, 1]


def test_ema_merge_run_trains_from_and_deploys_the_running_merge(tmp_path, recorded):
    result = run(tmp_path, "ema", "merge.preset=ema_merge")
    (s0, e0), (s1, e1) = recorded
    r1 = merge("interpolation", [e0, s0], weights=[0.5, 0.5])
    assert all(torch.equal(s1[k], r1[k]) for k in r1)
    r2 = merge("interpolation", [e1, r1], weights=[0.5, 0.5])
    assert all(torch.equal(final(result.out_dir)[k], r2[k]) for k in r2)
    assert not (result.out_dir / "history").exists()  # interpolation: the running merge is all it needs


def test_online_ema_run_matches_the_per_step_formula(tmp_path, monkeypatch):
    from fif.methods.finetune import Finetune

    steps = []

    def after_step(self, batch, step):  # runs after the optimizer step, before the runner's EMA update
        steps.append({k: v.clone() for k, v in self.clip.model.state_dict().items()})

    monkeypatch.setattr(Finetune, "after_step", after_step)
    theta0, starts, seen = {}, [], []
    original = fif.runner.task.train_task

    def spy(model, *args, **kwargs):
        if not theta0:
            theta0.update({k: v.clone() for k, v in model.state_dict().items()})
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return original(model, *args, **kwargs)

    monkeypatch.setattr(fif.runner.task, "train_task", spy)
    result = run(tmp_path, "online", "merge.preset=online_ema", "merge.ema_decay=0.8")
    assert len(steps) == 8
    ema = dict(theta0)
    for i, theta in enumerate(steps):
        if i == 4:  # task 2 starts from the EMA weights (the reference's ema_online_paint)
            starts.append(ema)
        ema = {k: 0.8 * ema[k] + 0.2 * theta[k] if theta[k].is_floating_point() else theta[k] for k in ema}
    got = final(result.out_dir)
    for k, v in ema.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6)
    for k, v in starts[0].items():  # the weights task 2 trained from = the EMA after task 1
        if v.is_floating_point():
            torch.testing.assert_close(seen[1][k], v, rtol=1e-5, atol=1e-6)


def test_adapter_methods_merge_on_the_deploy_side_and_refuse_merged_init(tmp_path):
    result = run(tmp_path, "lora", "method.name=lora", "method.rank=2", "merge.deploy=ema")
    deployed = final(result.out_dir)  # the running merge lives in the deployed (plain) architecture
    assert deployed and not any("lora" in k for k in deployed)
    assert set(result.clip.model.state_dict()) == set(deployed)
    with pytest.raises(ConfigError, match="merge.init=ema: method 'lora' owns the weights each task starts from"):
        run(tmp_path, "lora-init", "method.name=lora", "merge.init=ema")
    with pytest.raises(ConfigError, match="merge.deploy=online_ema averages the weights being trained"):
        run(tmp_path, "lora-online", "method.name=lora", "merge.preset=online_ema")
    assert not (tmp_path / "lora-init").exists()


def test_resume_mid_task_with_running_merge_and_online_ema_is_exact(tmp_path):
    overrides = ["merge.init=ema", "merge.deploy=online_ema", "merge.ema_decay=0.8", "checkpoint.every_steps=2"]
    whole = run(tmp_path, "whole", *overrides)

    class Stop(Exception):
        pass

    def stop_at_task_end(event):
        if event["event"] == "task_end" and event["task"] == 1:
            raise Stop

    out = tmp_path / "cut"
    with pytest.raises(Stop):
        fif.run(load_config("mini", [*SMALL, *overrides]), out_dir=out, on_event=stop_at_task_end)
    assert not (out / "summary.json").exists()
    fif.runner.stream.resume(out)  # from task 1's step-2 checkpoint: running merge and online EMA from the checkpoint
    assert (out / "summary.json").read_text() == (whole.out_dir / "summary.json").read_text()
    assert (out / "final.safetensors").read_bytes() == (whole.out_dir / "final.safetensors").read_bytes()


# ----------------------------------------------------------------------------------------------
# fif merge


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fif")
    merge_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def history_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("hist") / "run"
    fif.run(load_config("mini", [*SMALL, "merge.save_history=true"]), out_dir=out)
    return out


def test_fif_merge_run_history_round_trip_with_ties_and_lines(history_run, tmp_path, capsys):
    out = tmp_path / "ties.safetensors"
    assert cli(["merge", "--run", str(history_run), "-o", str(out), "--operator", "ties", "--option", "k=0.5",
                "--lines", "alpha=0.5,beta=1.0", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    history = history_run / "history"
    assert info["base"] == str(history / ZEROSHOT_FILE) and len(info["inputs"]) == 2
    expected = merge("ties", [history / history_file(0), history / history_file(1)], history / ZEROSHOT_FILE,
                     lines={"alpha": 0.5, "beta": 1.0}, k=0.5)
    got = load_file(str(out))
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["arch"] == "fif-mini-rn32" and json.loads(meta["fif_merge"])["options"] == {"k": 0.5}


def test_fif_merge_files_with_weights_and_eval(history_run, tmp_path, capsys):
    history = history_run / "history"
    out = tmp_path / "soup.safetensors"
    files = [str(history / history_file(0)), str(history_run)]  # a run folder means its final.safetensors
    assert cli(["merge", *files, "eval.datasets=[mini_digits]", "eval.min_samples=10",  # positionals together
                "-o", str(out), "--weights", "1,1,1,3", "--eval", "--run", str(history_run), "--subset"]) == 0
    text = capsys.readouterr().out
    assert "merged 4 checkpoints with interpolation" in text and "mini_digits" in text and "A_KA" in text


def test_fif_merge_errors(history_run, tmp_path):
    a = str(history_run / "history" / history_file(0))
    out = str(tmp_path / "m.safetensors")
    cases = [
        (["merge", "-o", out], "nothing to merge"),
        (["merge", a], "give the output file"),
        (["merge", a, "-o", str(tmp_path / "m.pt")], "end the name with it"),
        (["merge", a, "-o", a], "is one of the inputs"),
        (["merge", str(tmp_path / "nope.safetensors"), "-o", out], "does not exist"),
        (["merge", "--run", str(tmp_path), "-o", out], "merge.save_history=true"),
        (["merge", a, a, "-o", out, "--weights", "septic"], "give a scheme"),
        (["merge", a, a, "-o", out, "--weights", "1,2,3"], "one per checkpoint"),
        (["merge", a, "-o", out, "--operator", "ties", "--base", a, "--weights", "linear"], "interpolation operator"),
        (["merge", a, "eval.batch_size=8", "-o", out], "only apply with --eval"),
    ]
    for argv, message in cases:
        with pytest.raises(CliError, match=message):
            cli(argv)
    with pytest.raises(ValueError, match="did you mean 'ties'"):
        cli(["merge", a, "-o", out, "--operator", "tie"])
    with pytest.raises(CliError, match="give θ0 as --base"):
        cli(["merge", a, "-o", out, "--operator", "ties"])
    Path(out).write_bytes(b"x")
    with pytest.raises(CliError, match="--overwrite"):
        cli(["merge", a, "-o", out])
