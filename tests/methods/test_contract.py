"""One contract suite over every registered update method (see docs/adding-a-method.md).

Each method must: expose trainable parameters that belong to the model; give a finite loss whose
backward reaches exactly those parameters; change only them in an optimizer step; run its hooks in
order; deploy weights with the model's keys; and round-trip its state for exact resume.
"""

from __future__ import annotations

import copy

import pytest
import torch

from fif.core.optim import OptimConfig, build_optimizer
from fif.data.batch import Batch
from fif.methods import TaskInfo, build_method, freeze_all_but, registered_methods
from fif.model.clip import build_clip

METHODS = sorted(registered_methods())


@pytest.fixture(scope="module")
def base_clip():
    torch.manual_seed(0)
    return build_clip("fif-mini-rn32")


def _batch(clip, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = clip.normalize(torch.rand(n, 3, clip.image_size, clip.image_size, generator=g))
    tokens = clip.tokenize([f"a shape number {i}" for i in range(n)])
    source = torch.tensor([0, 1, 2, 1] * (n // 4), dtype=torch.int8)
    return Batch(images, tokens, source)


@pytest.fixture(params=METHODS)
def method_and_clip(request, base_clip):
    clip = copy.deepcopy(base_clip)
    method = build_method(request.param, {}, clip)
    freeze_all_but(clip.model, method.trainable_parameters())
    return method, clip


def test_registry_has_the_basics():
    assert {"finetune", "locked_text", "locked_image", "bitfit", "lnfit"} <= set(METHODS)


def test_trainable_parameters_belong_to_the_model(method_and_clip):
    method, clip = method_and_clip
    trainable = method.trainable_parameters()
    assert trainable, "a method must train something"
    model_params = {id(p) for p in clip.model.parameters()}
    assert all(id(p) in model_params for _, p in trainable), "trainable params must be registered in the model"
    assert len({id(p) for _, p in trainable}) == len(trainable)


def test_loss_is_finite_and_reaches_exactly_the_trainable_params(method_and_clip):
    method, clip = method_and_clip
    info = TaskInfo(0, 2, ["x+++y"], steps=1)
    method.begin_task(info)
    out = method.loss(_batch(clip), clip.model)
    assert out.total.ndim == 0 and torch.isfinite(out.total)
    out.total.backward()
    trainable = {id(p) for _, p in method.trainable_parameters()}
    for name, p in clip.model.named_parameters():
        if id(p) in trainable:
            assert p.grad is not None, f"{name} is trainable but got no gradient"
        else:
            assert p.grad is None, f"{name} is frozen but got a gradient"
    assert any(p.grad.abs().sum() > 0 for _, p in method.trainable_parameters())


def test_step_changes_only_trainable_params_and_hooks_run_in_order(method_and_clip):
    method, clip = method_and_clip
    before = {k: v.clone() for k, v in clip.model.state_dict().items()}
    named, optim_cfg = method.trainable_parameters(), OptimConfig(weight_decay=0.1)
    opt = method.build_optimizer(named, 1e-3, optim_cfg) or build_optimizer(named, 1e-3, optim_cfg)
    info = TaskInfo(0, 2, ["x+++y"], steps=2)
    method.begin_task(info)
    if (w := method.training_weights()) is not None:
        clip.model.load_state_dict(w)
    for step in range(2):
        batch = _batch(clip, seed=step)
        method.loss(batch, clip.model).total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.after_step(batch, step)
    method.end_task(info)
    trainable = {n for n, _ in method.trainable_parameters()}
    after = clip.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k]) and before[k].is_floating_point()}
    param_names = {n for n, _ in clip.model.named_parameters()}
    assert changed & trainable, "an optimizer step must change the trainable parameters"
    assert not (changed & (param_names - trainable)), f"frozen params changed: {sorted(changed - trainable)[:5]}"
    deployed = method.deploy_weights()
    if deployed is not None:  # the model's keys, or the base architecture's for methods that add modules
        assert set(deployed) == set(method.deploy_model(deployed).state_dict())
    assert method.extra_cost(info).flops >= 0


def test_state_dict_round_trip(method_and_clip):
    method, clip = method_and_clip
    state = method.state_dict()
    fresh = build_method(method.name, {}, copy.deepcopy(clip))
    fresh.load_state_dict(state)
    assert fresh.state_dict().keys() == state.keys()
