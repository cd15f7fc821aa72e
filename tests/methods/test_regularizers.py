"""EWC, SI and MAS do what their papers say (the contract suite covers the shared hooks).

Most checks run on a tiny linear CLIP stand-in (exact hand computations, milliseconds); the budget and
Fisher-temperature checks use the contract suite's mini model.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clip_stand_in import TinyClip
from fif.budget import hook_cost_mafs, mafs_per_step, max_steps, measure_step_cost
from fif.core.optim import OptimConfig, build_optimizer
from fif.data.batch import Batch
from fif.methods import TaskInfo, build_method, deploy_model_for, freeze_all_but
from fif.methods.regularizers import _QuadraticPenalty, importance_pass, output_norm_objective
from fif.model.clip import Clip, build_clip
from fif.model.loss import clip_contrastive_loss
from task_data import MemoryTaskData


def tiny_clip(seed: int = 0, dim: int = 3, logit_scale: float = math.log(10.0)) -> Clip:
    torch.manual_seed(seed)
    model = TinyClip(dim_in=4, vocab=10, dim=dim, bias=False, logit_scale=logit_scale)
    tokenizer = lambda texts: torch.zeros(len(texts), 3, dtype=torch.long)  # noqa: E731
    return Clip(model, tokenizer, "tiny", 2, (0.0,) * 3, (1.0,) * 3)


def tiny_batches(n: int = 8, seed: int = 0) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 4, generator=g)
    tokens = torch.randint(0, 10, (n, 3), generator=g)
    return [Batch(images, tokens, torch.ones(n, dtype=torch.int8))]


def task_with(batches: list[Batch], index: int = 0) -> TaskInfo:
    """A TaskInfo whose data's ``batches(b)`` re-chunks ``batches`` into batches of ``b`` (same order every call)."""
    images = torch.cat([b.images for b in batches])
    tokens = torch.cat([b.tokens for b in batches])
    rows = Batch(images, tokens, torch.ones(len(images), dtype=torch.int8))
    return TaskInfo(index, 2, ["x+++y"], steps=1, num_samples=len(images), data=MemoryTaskData(rows))


def build(name: str, clip: Clip, **options):
    method = build_method(name, options, clip)
    freeze_all_but(clip.model, method.trainable_parameters())
    return method


def move_weights_(clip: Clip, scale: float, seed: int = 1) -> dict[str, torch.Tensor]:
    """Add ``scale`` × a fixed random direction to every weight; returns the direction."""
    g = torch.Generator().manual_seed(seed)
    direction = {n: torch.randn(p.shape, generator=g) for n, p in clip.model.named_parameters()}
    with torch.no_grad():
        for n, p in clip.model.named_parameters():
            p.add_(scale * direction[n])
    return direction


def penalty_of(method, clip: Clip, batch: Batch) -> torch.Tensor:
    return method.loss(batch, clip.model).parts["penalty"]


# ----------------------------------------------------------------------------------------------
# The penalty


def test_quadratic_penalty_value_and_gradient_match_autograd():
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 2), (4,)]
    params = [torch.randn(s, generator=g, dtype=torch.double, requires_grad=True) for s in shapes]
    weights = [torch.rand(s, generator=g, dtype=torch.double) for s in shapes]
    anchors = [torch.randn(s, generator=g, dtype=torch.double) for s in shapes]
    want = sum((w * (p - a) ** 2).sum() for w, a, p in zip(weights, anchors, params))
    got = _QuadraticPenalty.apply(weights, anchors, *params)
    assert torch.allclose(got.double(), want)
    assert torch.autograd.gradcheck(lambda *ps: _QuadraticPenalty.apply(weights, anchors, *ps).double(), params)


def test_ewc_penalty_is_half_lambda_fisher_weighted_distance():
    clip = tiny_clip()
    ewc = build("ewc", clip, strength=3.0)
    named = dict(clip.model.named_parameters())
    g = torch.Generator().manual_seed(5)
    ewc.state.importance = {n: torch.rand(p.shape, generator=g) for n, p in named.items()}
    ewc.state.anchor = {n: p.detach() - torch.randn(p.shape, generator=g) for n, p in named.items()}
    fisher, anchor = ewc.state.importance, ewc.state.anchor
    want = 3.0 / 2 * sum((fisher[n] * (p.detach() - anchor[n]) ** 2).sum() for n, p in named.items())
    batch = tiny_batches()[0]
    out = ewc.loss(batch, clip.model)
    img, txt, scale = clip.model(batch.images, batch.tokens).values()
    assert torch.allclose(out.parts["penalty"], want)
    assert torch.allclose(out.total, clip_contrastive_loss(img, txt, scale) + want)
    out.total.backward()  # the penalty's gradient is λ·F·(θ − θ*) on top of the CLIP loss's
    clip_grads = torch.autograd.grad(clip_contrastive_loss(img, txt, scale), list(named.values()))
    for (n, p), cg in zip(named.items(), clip_grads):
        expected = cg + 3.0 * ewc.state.importance[n] * (p.detach() - ewc.state.anchor[n])
        assert torch.allclose(p.grad, expected, atol=1e-6), n


def test_penalty_reads_the_parameters_through_a_wrapped_model():
    """DDP renames parameters (``module.…``); the penalty must not depend on the names of the model passed."""
    clip = tiny_clip()
    ewc = build("ewc", clip)
    ewc.end_task(task_with(tiny_batches(8)))
    move_weights_(clip, 0.01)
    batch = tiny_batches(8)[0]

    class Wrapper(nn.Module):  # like DistributedDataParallel: the model under ``module``
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args):
            return self.module(*args)

    wrapped = ewc.loss(batch, Wrapper(clip.model))
    assert torch.equal(wrapped.parts["penalty"], penalty_of(ewc, clip, batch)) and wrapped.parts["penalty"] > 0


def test_no_penalty_before_the_first_task_ended():
    for name in ("ewc", "si", "mas"):
        clip = tiny_clip()
        method = build(name, clip)
        assert penalty_of(method, clip, tiny_batches()[0]) == 0


# ----------------------------------------------------------------------------------------------
# EWC


def test_fisher_is_the_squared_clip_loss_gradient_at_the_models_temperature():
    clip = tiny_clip()
    ewc = build("ewc", clip, fisher_batch_size=8)
    batches = tiny_batches(8)
    ewc.end_task(task_with(batches))
    img, txt, scale = clip.model(batches[0].images, batches[0].tokens).values()
    grads = torch.autograd.grad(clip_contrastive_loss(img, txt, scale), list(clip.model.parameters()))
    for (n, _), g in zip(clip.model.named_parameters(), grads):
        assert torch.allclose(ewc.state.importance[n], g**2, rtol=1e-5, atol=1e-12), n


def test_fisher_changes_with_the_temperature():
    fishers = []
    for logit_scale in (math.log(1.0), math.log(50.0)):
        clip = tiny_clip(logit_scale=logit_scale)
        ewc = build("ewc", clip)
        ewc.end_task(task_with(tiny_batches(8)))
        fishers.append(ewc.state.importance["visual.weight"])
    assert not torch.allclose(fishers[0], fishers[1], rtol=0.05)


def test_fisher_on_the_mini_model_uses_its_temperature():
    """The real pass (eval mode, autograd.grad) on the contract suite's model, at two temperatures."""
    torch.manual_seed(0)
    base = build_clip("fif-mini-rn32")
    n = 4
    g = torch.Generator().manual_seed(0)
    images = base.normalize(torch.rand(n, 3, base.image_size, base.image_size, generator=g))
    batch = Batch(images, base.tokenize([f"a shape number {i}" for i in range(n)]), torch.ones(n, dtype=torch.int8))
    fishers = []
    for logit_scale in (0.0, math.log(50.0)):
        clip = copy.deepcopy(base)
        with torch.no_grad():
            clip.model.logit_scale.fill_(logit_scale)
        ewc = build("ewc", clip, fisher_batch_size=n)
        before = {k: v.clone() for k, v in clip.model.state_dict().items()}
        ewc.end_task(task_with([batch]))
        assert all(torch.equal(before[k], v) for k, v in clip.model.state_dict().items()), "the pass changed the model"
        assert clip.model.training, "the pass must restore train mode"
        fishers.append(ewc.state.importance)
    total = [sum(f.sum() for f in fisher.values()) for fisher in fishers]
    assert total[0] > 0 and not torch.isclose(total[0], total[1], rtol=0.05)


def test_penalty_is_zero_right_after_end_task_and_grows_as_weights_move():
    clip = tiny_clip()
    ewc = build("ewc", clip)
    ewc.end_task(task_with(tiny_batches(8)))
    batch = tiny_batches(8, seed=3)[0]
    assert penalty_of(ewc, clip, batch) == 0
    move_weights_(clip, 0.01)
    small = penalty_of(ewc, clip, batch)
    move_weights_(clip, 0.01)  # twice as far along the same direction: 4× the quadratic penalty
    large = penalty_of(ewc, clip, batch)
    assert small > 0
    assert torch.isclose(large, 4 * small, rtol=1e-3)


@pytest.mark.parametrize("name, gamma", [("ewc", 0.5), ("ewc", 0.0), ("mas", 0.25)])
def test_online_accumulation_decays_the_old_importance_and_adds_the_new(name, gamma):
    """Ω ← γ·Ω₁ + Ω₂ with Ω₂ ≠ Ω₁ (other data), so a wrong γ or a swapped order is seen."""
    method = build(name, tiny_clip(), gamma=gamma)
    first_task, second_task = task_with(tiny_batches(8, seed=0), 0), task_with(tiny_batches(8, seed=1), 0)
    method.end_task(first_task)
    first = {n: f.clone() for n, f in method.state.importance.items()}
    fresh = build(name, tiny_clip())  # Ω₂ alone, at the same weights
    fresh.end_task(second_task)
    second = fresh.state.importance
    assert not torch.allclose(first["visual.weight"], second["visual.weight"])
    method.end_task(second_task)
    for n, f in method.state.importance.items():
        assert torch.allclose(f, gamma * first[n] + second[n], atol=1e-7), n


def test_ewc_refuses_a_fisher_batch_of_one():
    with pytest.raises(ValueError, match="fisher_batch_size=1.*0 for a batch of 1"):
        build("ewc", tiny_clip(), fisher_batch_size=1)


@pytest.mark.parametrize("name", ["ewc", "mas"])
def test_the_last_tasks_pass_is_skipped_and_not_charged(name):
    task = task_with(tiny_batches(8), index=0)
    last = TaskInfo(1, 2, task.concepts, steps=1, num_samples=task.num_samples, data=task.data)
    on_mini = build(name, build_clip("fif-mini-rn32"))  # the cost is traced with the architecture's batch
    assert on_mini.extra_cost(task).flops > 0 and on_mini.extra_cost(last).flops == 0
    method = build(name, tiny_clip())
    method.end_task(last)
    assert method.state.importance is None  # no pass ran


def test_fisher_samples_caps_the_pass():
    clip = tiny_clip()
    all_data = build("ewc", clip, fisher_batch_size=2)
    all_data.end_task(task_with(tiny_batches(8)))
    four = build("ewc", copy.deepcopy(clip), fisher_batch_size=2, fisher_samples=4)
    four.end_task(task_with(tiny_batches(8)))
    first_four = build("ewc", copy.deepcopy(clip), fisher_batch_size=2)
    first_four.end_task(task_with([Batch(b.images[:4], b.tokens[:4], b.source[:4]) for b in tiny_batches(8)]))
    f, f4, want = (m.state.importance["visual.weight"] for m in (all_data, four, first_four))
    assert torch.allclose(f4, want) and not torch.allclose(f4, f)


@pytest.mark.parametrize("name", ["ewc", "si", "mas"])
def test_learned_weights_are_kept_at_task_end(name):
    clip = tiny_clip()
    method = build(name, clip)
    task = task_with(tiny_batches(8))
    method.begin_task(task)
    opt = torch.optim.SGD([p for _, p in method.trainable_parameters()], lr=0.1)
    for step, batch in enumerate(tiny_batches(8) * 3):
        method.loss(batch, clip.model).total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.after_step(batch, step)
    trained = {k: v.clone() for k, v in clip.model.state_dict().items()}
    method.end_task(task)
    assert method.deploy_weights() is None and method.training_weights() is None
    assert all(torch.equal(trained[k], v) for k, v in clip.model.state_dict().items())
    assert all(torch.equal(method.state.anchor[n], p) for n, p in clip.model.named_parameters())


@pytest.mark.parametrize("name", ["ewc", "si", "mas"])
def test_state_round_trip_gives_the_same_penalty(name):
    clip = tiny_clip()
    method = build(name, clip)
    task = task_with(tiny_batches(8))
    method.begin_task(task)
    method.end_task(task)
    if name == "si":  # SI's importance comes from training steps; give it some
        method.state.importance = {n: torch.rand(p.shape) for n, p in clip.model.named_parameters()}
    move_weights_(clip, 0.05)
    batch = tiny_batches(8, seed=2)[0]
    fresh = build(name, clip)
    fresh.load_state_dict(method.state_dict())
    assert fresh.state_dict().keys() == method.state_dict().keys()
    assert torch.equal(penalty_of(fresh, clip, batch), penalty_of(method, clip, batch))


def test_load_state_dict_rejects_a_mismatched_model():
    ewc = build("ewc", tiny_clip())
    ewc.end_task(task_with(tiny_batches(8)))
    other = build("ewc", tiny_clip(dim=5))
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(ewc.state_dict())


def test_end_task_without_data_keeps_the_importance_and_warns(caplog):
    ewc = build("ewc", tiny_clip())
    with caplog.at_level("WARNING"):
        ewc.end_task(TaskInfo(0, 2, ["x+++y"], steps=1))
    assert ewc.state.importance is None and ewc.state.anchor is not None
    assert "without its data" in caplog.text


@pytest.mark.parametrize(
    "options", [{"strength": 0.0}, {"gamma": 1.5}, {"fisher_samples": 0}, {"fisher_batch_size": -1}, {"gamma": -0.1}]
)
def test_bad_options_are_rejected(options):
    from fif.core.typed import ConfigError

    with pytest.raises((ValueError, ConfigError)):
        build_method("ewc", options, tiny_clip())


# ----------------------------------------------------------------------------------------------
# Budget: the passes are charged, so EWC and MAS get fewer steps


@pytest.fixture(scope="module")
def mini_clip():
    torch.manual_seed(0)
    return build_clip("fif-mini-rn32")


@pytest.mark.parametrize("name", ["ewc", "mas"])
def test_extra_cost_counts_the_pass_and_leaves_fewer_steps(name, mini_clip):
    batch_size, samples = 16, 64
    clip = copy.deepcopy(mini_clip)
    options = {"fisher_samples": samples, "fisher_batch_size": 16} if name == "ewc" else {
        "importance_samples": samples, "importance_batch_size": 16}
    method = build(name, clip, **options)
    finetune = build("finetune", clip)
    reference = measure_step_cost(clip, finetune, batch_size, "cpu")
    step = measure_step_cost(clip, method, batch_size, "cpu")
    cost = method.extra_cost(TaskInfo(0, 2, ["x+++y"], steps=0, num_samples=1000))
    assert cost.flops > 0
    if name == "ewc":  # the Fisher pass is 4 forward + backward passes of the CLIP loss at batch 16
        assert cost.flops == 4 * reference.flops
    else:  # no B×B logits, but the same towers
        assert 0.9 * 4 * reference.flops < cost.flops < 4 * reference.flops
    capped = method.extra_cost(TaskInfo(0, 2, ["x+++y"], steps=0, num_samples=32))
    assert capped.flops == pytest.approx(cost.flops / 2)
    task_budget = 20 * reference.flops
    plain = max_steps(task_budget, mafs_per_step(reference, reference))
    with_pass = max_steps(task_budget, mafs_per_step(step, reference), hook_cost_mafs(cost, reference))
    # the pass costs 4 steps; the Fisher/importance and anchor copies the method holds raise its memory multiplier
    assert plain == 20 and with_pass == {"ewc": 11, "mas": 11}[name], with_pass


def test_si_costs_no_extra_flops(mini_clip):
    si = build("si", copy.deepcopy(mini_clip))
    assert si.extra_cost(TaskInfo(0, 2, ["x+++y"], steps=0, num_samples=1000)).flops == 0


# ----------------------------------------------------------------------------------------------
# MAS


def test_mas_importance_is_the_mean_absolute_gradient_of_the_squared_output_norm():
    clip = tiny_clip()
    mas = build("mas", clip, importance_batch_size=1)
    batch = tiny_batches(6)[0]
    mas.end_task(task_with([batch]))
    W = clip.model.visual.weight.detach()
    x = batch.images
    # ∂‖W x‖²/∂W = 2 (W x) xᵀ per sample; MAS averages its absolute value over samples.
    want = torch.stack([(2 * torch.outer(W @ xi, xi)).abs() for xi in x]).mean(0)
    assert torch.allclose(mas.state.importance["visual.weight"], want, atol=1e-6)
    # Text: ∂‖Σ_j E[t_j]‖²/∂E[k] = 2·count_k·Σ_j E[t_j].
    E = clip.model.token_embedding.weight.detach()
    per_sample = []
    for tokens in batch.tokens:
        counts = torch.bincount(tokens, minlength=E.shape[0]).float()
        per_sample.append((2 * torch.outer(counts, E[tokens].sum(0))).abs())
    assert torch.allclose(mas.state.importance["token_embedding.weight"], torch.stack(per_sample).mean(0), atol=1e-6)
    assert torch.equal(mas.state.importance["logit_scale"], torch.zeros(()))  # the norms do not read it


def test_mas_larger_batches_take_the_mean_gradient():
    clip = tiny_clip()
    named = list(clip.model.named_parameters())
    batch = tiny_batches(6)[0]
    omega, seen = importance_pass(clip.model, named, [batch], 100, output_norm_objective, torch.abs)
    W, x = clip.model.visual.weight.detach(), batch.images
    want = torch.stack([2 * torch.outer(W @ xi, xi) for xi in x]).mean(0).abs()
    assert seen == 6 and torch.allclose(omega["visual.weight"], want, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# SI


class Quadratic(nn.Module):
    def __init__(self, theta):
        super().__init__()
        self.theta = nn.Parameter(torch.as_tensor(theta, dtype=torch.float32).clone())


def quadratic_si(theta0, **options):
    tokenizer = lambda t: torch.zeros(len(t), 1, dtype=torch.long)  # noqa: E731
    clip = Clip(Quadratic(theta0), tokenizer, "quad", 1, (0.0,) * 3, (1.0,) * 3)
    return clip, build("si", clip, **options)


def test_si_path_integral_matches_a_hand_computation_on_a_quadratic():
    """L = ½ Σ h θ², SGD: g = hθ, Δθ = −η g, so each step adds −g·Δθ = η h² θ² ≥ 0 to ω."""
    h = torch.tensor([1.0, 4.0, 0.25])
    theta0, lr, steps = torch.tensor([1.0, -2.0, 3.0]), 0.05, 10
    clip, si = quadratic_si(theta0, xi=0.1)
    theta = clip.model.theta
    opt = torch.optim.SGD([theta], lr=lr)
    task = TaskInfo(0, 2, ["x+++y"], steps=steps)
    si.begin_task(task)
    want, t = torch.zeros(3), theta0.clone()
    for step in range(steps):
        (0.5 * (h * theta**2).sum()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)  # as the runner does: gradients are gone before after_step
        si.after_step(None, step)
        want += lr * h**2 * t**2
        t = t - lr * h * t
    assert torch.allclose(si.omega["theta"], want, rtol=1e-5)
    # ω is the loss decrease of each weight (the path integral), up to the discretisation error
    loss_drop = 0.5 * h * (theta0**2 - t**2)
    assert (si.omega["theta"] >= loss_drop).all() and torch.allclose(si.omega["theta"], loss_drop, rtol=0.15)
    si.end_task(task)
    delta = t - theta0
    assert torch.allclose(si.state.importance["theta"], want / (delta**2 + 0.1), rtol=1e-5)
    assert si.omega is None and torch.equal(si.state.anchor["theta"], theta.detach())


def test_si_omega_is_non_negative_in_expectation_with_noisy_gradients():
    g = torch.Generator().manual_seed(0)
    n = 2000
    h = torch.rand(n, generator=g) + 0.5
    clip, si = quadratic_si(torch.randn(n, generator=g))
    theta = clip.model.theta
    opt = torch.optim.SGD([theta], lr=0.02)
    si.begin_task(TaskInfo(0, 1, [], steps=50))
    for step in range(50):
        noise = torch.randn(n, generator=g)
        (0.5 * (h * theta**2).sum() + (noise * theta).sum()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        si.after_step(None, step)
    assert si.omega["theta"].mean() > 0


@pytest.mark.parametrize("loss_scale", [1.0, 1024.0])
def test_si_integrates_the_loss_gradient_before_clipping_under_adamw(loss_scale):
    """Zenke et al.: ω = −Σ ∂L/∂θ·Δθ with the loss's own gradient; clipping (and fp16's loss scale) change
    the update Δθ, not the g that multiplies it. Hand value: AdamW's update written out, L = ½‖θ‖²."""
    theta0, lr, wd, steps, max_norm = torch.tensor([3.0, 4.0]), 0.1, 0.01, 3, 1.0
    clip, si = quadratic_si(theta0)
    theta = clip.model.theta
    opt = torch.optim.AdamW([theta], lr=lr, weight_decay=wd, eps=1e-8)
    si.begin_task(TaskInfo(0, 1, [], steps=steps))
    want, t, m, v = torch.zeros(2), theta0.clone(), torch.zeros(2), torch.zeros(2)
    for step in range(steps):
        loss = 0.5 * (theta**2).sum()
        si.watch_loss(loss)  # what si.loss does with the loss it returns
        (loss_scale * loss).backward()  # GradScaler.scale(loss).backward()
        theta.grad.div_(loss_scale)  # GradScaler.unscale_
        torch.nn.utils.clip_grad_norm_([theta], max_norm)  # in place, as the loop does
        opt.step()
        opt.zero_grad(set_to_none=True)
        si.after_step(None, step)
        g = t.clone()  # ∂L/∂θ, unclipped
        gc = g * min(1.0, max_norm / g.norm().item())
        m, v = 0.9 * m + 0.1 * gc, 0.999 * v + 0.001 * gc**2
        update = (m / (1 - 0.9 ** (step + 1))) / ((v / (1 - 0.999 ** (step + 1))).sqrt() + 1e-8)
        new = t * (1 - lr * wd) - lr * update
        want += -g * (new - t)
        t = new
    assert torch.allclose(theta.detach(), t, rtol=1e-5)
    assert torch.allclose(si.omega["theta"], want, rtol=1e-4)
    # the clipped gradient would give a path integral several times smaller (|g| = 5, clipped to 1)
    assert (si.omega["theta"] > 2 * want / 5).all()


def test_si_skips_non_finite_steps():
    clip, si = quadratic_si(torch.tensor([1.0, 2.0]))
    theta = clip.model.theta
    si.begin_task(TaskInfo(0, 1, [], steps=1))
    (theta * torch.tensor([float("nan"), 1.0])).sum().backward()
    theta.grad = None  # the runner's skipped step: no update, gradients dropped
    si.after_step(None, 0)
    assert torch.isfinite(si.omega["theta"]).all()


def test_si_mid_task_resume_continues_the_path_integral():
    h = torch.tensor([1.0, 2.0])

    def run(steps, si, theta, opt, start=0):
        for step in range(start, steps):
            (0.5 * (h * theta**2).sum()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            si.after_step(None, step)

    clip, si = quadratic_si(torch.tensor([1.0, -1.0]))
    opt = torch.optim.SGD([clip.model.theta], lr=0.1)
    si.begin_task(TaskInfo(0, 1, [], steps=6))
    run(6, si, clip.model.theta, opt)

    clip2, si2 = quadratic_si(torch.tensor([1.0, -1.0]))
    opt2 = torch.optim.SGD([clip2.model.theta], lr=0.1)
    si2.begin_task(TaskInfo(0, 1, [], steps=6))
    run(3, si2, clip2.model.theta, opt2)
    state, weights = si2.state_dict(), {k: v.clone() for k, v in clip2.model.state_dict().items()}
    clip3, si3 = quadratic_si(torch.tensor([0.0, 0.0]))  # a fresh process: state first, then weights
    si3.load_state_dict(state)
    clip3.model.load_state_dict(weights)
    opt3 = torch.optim.SGD([clip3.model.theta], lr=0.1)
    run(6, si3, clip3.model.theta, opt3, start=3)
    assert torch.allclose(si3.omega["theta"], si.omega["theta"])


def test_si_on_the_mini_model_accumulates_importance(mini_clip):
    """Two AdamW steps of the CLIP loss on the real model: ω, then Ω at task end, on every weight."""
    clip = copy.deepcopy(mini_clip)
    si = build("si", clip)
    named = si.trainable_parameters()
    opt = build_optimizer(named, 1e-3, OptimConfig(weight_decay=0.0))
    g = torch.Generator().manual_seed(0)
    images = clip.normalize(torch.rand(4, 3, clip.image_size, clip.image_size, generator=g))
    batch = Batch(images, clip.tokenize([f"a shape number {i}" for i in range(4)]), torch.ones(4, dtype=torch.int8))
    task = TaskInfo(0, 2, ["x+++y"], steps=2)
    si.begin_task(task)
    for step in range(2):
        si.loss(batch, clip.model).total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        si.after_step(batch, step)
    assert sum(w.sum() for w in si.omega.values()) > 0
    si.end_task(task)
    assert all((w >= 0).all() for w in si.state.importance.values())
    assert penalty_of(si, clip, batch) == 0
    move_weights_(clip, 1e-3)
    assert penalty_of(si, clip, batch) > 0
    copied = deploy_model_for(si, clip.model, clip.model.state_dict())  # a copy of the model does not carry SI's hooks
    assert all(not getattr(p, "_post_accumulate_grad_hooks", None) for p in copied.parameters())


# ----------------------------------------------------------------------------------------------
# Through the runner: the pass reads the task's data, is charged, and SI resumes exactly mid-task

RUN = [
    "model.pretrained=null", "budget.ft_steps=16", "stream.tasks=2", "train.batch_size=8", "train.log_every=4",
    "run.threads=1", "eval.min_samples=10", "stream.datasets=[mini_digits,mini_letters]",
    "eval.datasets=[mini_digits,mini_colors]",
    "data.options={pool_size: 200, train_per_class: 6, test_per_class: 3, eval_size: 30, retrieval_train: 30, "
    "retrieval_test: 10}",
]


def _task_steps(events: list[dict]) -> list[int]:
    return [e["steps"] for e in events if e["event"] == "task_end"]


def test_ewc_run_charges_its_fisher_pass_and_reads_the_task_data(tmp_path):
    import fif
    from fif.runner.checkpoint import CHECKPOINT_DIR, list_checkpoints, load_checkpoint

    events: list[dict] = []
    cfg = fif.load_config("mini", [*RUN, "method.name=ewc", "method.fisher_samples=16", "method.fisher_batch_size=8"])
    fif.run(cfg, out_dir=tmp_path / "ewc", on_event=events.append)
    # finetune gets 16 / 2 = 8 steps per task; the Fisher pass costs two steps' FLOPs (16 samples at batch 8)
    # the last task's pass is skipped (no later task reads it) and not charged: 8 steps
    # and the Fisher and anchor copies EWC holds raise its memory multiplier (method state counts in MAFs)
    assert _task_steps(events) == [4, 5]
    after_first = next(path for p, path in list_checkpoints(tmp_path / "ewc" / CHECKPOINT_DIR) if p.task == 1)
    state = load_checkpoint(after_first).state["method"]
    assert sum(float(f.sum()) for f in state["importance"].values()) > 0


@pytest.mark.slow
def test_si_resumed_mid_task_ends_bit_identical(tmp_path):
    import shutil

    import fif
    from fif.runner.checkpoint import CHECKPOINT_DIR, list_checkpoints
    from fif.runner.stream import resume

    cfg = fif.load_config("mini", [*RUN, "method.name=si", "checkpoint.every_steps=3", "checkpoint.keep_last=20"])
    full = tmp_path / "full"
    fif.run(cfg, out_dir=full)
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    (cut / "summary.json").unlink()
    (cut / "final.safetensors").unlink()
    checkpoints = list_checkpoints(cut / CHECKPOINT_DIR)
    # inside the first task: its ω (restored from the checkpoint) sets the second task's penalty
    mid = next(p for p, _ in checkpoints if p.task == 0 and p.started and p.step == 3)
    for position, path in checkpoints:
        if position > mid:
            shutil.rmtree(path)
    resume(cut)
    assert (cut / "final.safetensors").read_bytes() == (full / "final.safetensors").read_bytes()
