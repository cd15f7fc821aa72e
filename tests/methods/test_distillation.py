"""LwF and ZSCL do what their papers say (the contract suite covers the shared hooks).

Most checks run on a tiny linear CLIP (no BatchNorm, so train and eval mode agree and student = teacher
gives exactly zero); the budget checks count FLOPs on a meta copy of the mini model (no compute).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from clip_stand_in import TinyClip
from fif.budget import measure_step_cost, meta_clip
from fif.data.batch import Batch
from fif.methods import TaskInfo, build_method, freeze_all_but
from fif.methods.distillation import distillation_kl, pretraining_rows
from fif.model.clip import Clip
from task_data import MemoryTaskData


def _tokenize(texts):
    """Deterministic toy tokenizer: 3 token ids per text from its characters."""
    return torch.tensor([[(sum(map(ord, t)) * (k + 1)) % 16 for k in range(3)] for t in texts], dtype=torch.long)


def tiny_clip(seed: int = 0) -> Clip:
    torch.manual_seed(seed)
    return Clip(TinyClip(vocab=16), _tokenize, "tiny", 2, (0.5,) * 3, (0.25,) * 3)


def batch_of(n: int = 8, seed: int = 0, source=None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 2, 2, generator=g)
    tokens = torch.randint(0, 16, (n, 3), generator=g)
    source = torch.tensor(source if source is not None else [0, 1] * (n // 2), dtype=torch.int8)
    return Batch(images, tokens, source)


def build(name: str, clip: Clip, **options):
    method = build_method(name, options, clip)
    freeze_all_but(clip.model, method.trainable_parameters())
    return method


def nudge_(clip: Clip, scale: float, seed: int = 1) -> None:
    """Move every weight by ``scale`` × a fixed random direction."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in clip.model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def reference_task(index: int = 0, calls: list | None = None) -> TaskInfo:
    """A TaskInfo whose data's reference_texts(n) gives n fixed captions (and records the n asked for)."""

    def texts(n: int) -> list[str]:
        if calls is not None:
            calls.append(n)
        return [f"caption {i}" for i in range(n)]

    return TaskInfo(index, 3, ["x+++y"], steps=1, seed=7, data=MemoryTaskData(texts=texts))


# ----------------------------------------------------------------------------------------------
# The math


def test_distillation_kl_is_zero_for_equal_logits_and_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    assert distillation_kl(t, t, 2.0) == 0
    assert distillation_kl(t + 3.0, t, 2.0).abs() < 1e-6  # a per-row constant changes no softmax
    p, logq = F.softmax(t / 2.0, -1), F.log_softmax(s / 2.0, -1)
    expected = 4.0 * (p * (p.log() - logq)).sum(-1).mean()
    assert torch.allclose(distillation_kl(s, t, 2.0), expected, atol=1e-6)


def test_distillation_kl_row_weights_leave_zero_rows_out():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    w = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert torch.allclose(distillation_kl(s, t, 1.0, w), distillation_kl(s[[0, 2]], t[[0, 2]], 1.0))


def test_pretraining_rows_fall_back_to_the_whole_batch():
    assert pretraining_rows(torch.tensor([0, 1, 2, 0], dtype=torch.int8)).tolist() == [1, 0, 0, 1]
    assert pretraining_rows(torch.tensor([1, 2, 1], dtype=torch.int8)).tolist() == [1, 1, 1]


# ----------------------------------------------------------------------------------------------
# LwF


def test_lwf_is_zero_when_student_is_teacher_and_grows_as_they_diverge():
    clip = tiny_clip()
    lwf = build("lwf", clip)
    batch = batch_of()
    values = []
    for scale in (0.0, 0.05, 0.3):
        nudge_(clip, scale) if scale else None
        values.append(float(lwf.loss(batch, clip.model).parts["distill"]))
    assert values[0] == 0
    assert 0 < values[1] < values[2]


def test_lwf_total_is_clip_plus_lambda_distill():
    clip = tiny_clip()
    lwf = build("lwf", clip, strength=3.0)
    nudge_(clip, 0.2)
    out = lwf.loss(batch_of(), clip.model)
    assert torch.allclose(out.total, out.parts["clip"] + 3.0 * out.parts["distill"])


def test_teacher_is_frozen_outside_the_model_and_not_deployed():
    clip = tiny_clip()
    for name in ("lwf", "zscl"):
        method = build(name, copy.deepcopy(clip))
        teacher = method.teacher.module
        model_params = {id(p) for p in method.clip.model.parameters()}
        assert not any(id(p) in model_params for p in teacher.parameters())
        assert not any(id(p) in {id(q) for q in teacher.parameters()} for _, p in method.trainable_parameters())
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        before = {k: v.clone() for k, v in teacher.state_dict().items()}
        opt = torch.optim.SGD([p for _, p in method.trainable_parameters()], lr=0.5)
        method.begin_task(reference_task())
        method.clip.model.train()
        for step in range(2):
            nudge_(method.clip, 0.1, seed=step)  # student ≠ teacher, so the distillation term has a gradient
            method.loss(batch_of(seed=step), method.clip.model).total.backward()
            opt.step()
            opt.zero_grad()
            method.after_step(batch_of(seed=step), step)
        assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items()), name
        assert all(p.grad is None for p in teacher.parameters())
        assert not teacher.training
        deployed = method.deploy_weights()
        assert deployed is None or set(deployed) == set(method.clip.model.state_dict())


def test_lwf_end_task_makes_the_current_weights_the_teacher_in_place():
    clip = tiny_clip()
    lwf = build("lwf", clip)
    batch = batch_of()
    storage = [p.data_ptr() for p in lwf.teacher.module.parameters()]
    nudge_(clip, 0.3)
    assert lwf.loss(batch, clip.model).parts["distill"] > 0
    lwf.end_task(TaskInfo(0, 2, [], steps=1))
    assert lwf.loss(batch, clip.model).parts["distill"] == 0
    assert [p.data_ptr() for p in lwf.teacher.module.parameters()] == storage  # one copy, reused


def test_lwf_symmetric_adds_the_text_side():
    clip = tiny_clip()
    one_way, two_way = build("lwf", copy.deepcopy(clip)), build("lwf", copy.deepcopy(clip), symmetric=True)
    nudge_(clip, 0.2)  # the student moves away from both teachers (θ0)
    one = one_way.loss(batch_of(), clip.model).parts["distill"]
    both = two_way.loss(batch_of(), clip.model).parts["distill"]
    assert both > 0 and not torch.isclose(one, both)


def test_lwf_state_round_trip_restores_the_teacher():
    clip = tiny_clip()
    lwf = build("lwf", clip)
    nudge_(clip, 0.3)
    lwf.end_task(TaskInfo(0, 2, [], steps=1))
    fresh = build("lwf", tiny_clip())  # a fresh method's teacher is θ0
    fresh.load_state_dict(lwf.state_dict())
    for k, v in lwf.teacher.module.state_dict().items():
        assert torch.equal(v, fresh.teacher.module.state_dict()[k]), k
    with pytest.raises(ValueError, match="teacher"):
        fresh.load_state_dict({})


# ----------------------------------------------------------------------------------------------
# ZSCL


def test_zscl_is_zero_at_theta0_and_grows_as_the_model_moves():
    clip = tiny_clip()
    zscl = build("zscl", clip, reference_size=6)
    zscl.begin_task(reference_task())
    batch = batch_of()
    values = []
    for scale in (0.0, 0.05, 0.3):
        nudge_(clip, scale) if scale else None
        parts = zscl.loss(batch, clip.model).parts
        values.append(float(parts["distill_image"] + parts["distill_text"]))
    assert values[0] == 0
    assert 0 < values[1] < values[2]


def test_zscl_uses_only_the_pretraining_part_of_the_batch():
    clip = tiny_clip()
    zscl = build("zscl", clip, reference_size=6, reference_per_step=6)
    zscl.begin_task(reference_task())
    nudge_(clip, 0.3)
    batch = batch_of(source=[0, 0, 0, 0, 1, 1, 2, 2])
    other = Batch(batch.images.clone(), batch.tokens.clone(), batch.source)
    other.images[4:] = torch.randn(4, 3, 2, 2)  # change only the update and buffer rows
    other.tokens[4:] = (other.tokens[4:] + 5) % 16
    a, b = zscl.loss(batch, clip.model).parts, zscl.loss(other, clip.model).parts
    for key in ("distill_image", "distill_text"):
        assert torch.allclose(a[key], b[key], atol=1e-7), key
    assert not torch.allclose(a["clip"], b["clip"])  # the CLIP loss does see the whole batch
    pool_only = Batch(batch.images[:4], batch.tokens[:4], batch.source[:4])
    c = zscl.loss(pool_only, clip.model).parts
    for key in ("distill_image", "distill_text"):
        assert torch.allclose(a[key], c[key], atol=1e-6), key


def test_zscl_without_pretraining_rows_distils_the_whole_batch():
    clip = tiny_clip()
    zscl = build("zscl", clip, reference_size=6)
    zscl.begin_task(reference_task())
    nudge_(clip, 0.3)
    images, tokens = batch_of().images, batch_of().tokens
    as_pool = zscl.loss(Batch(images, tokens, torch.zeros(8, dtype=torch.int8)), clip.model).parts
    as_update = zscl.loss(Batch(images, tokens, torch.ones(8, dtype=torch.int8)), clip.model).parts
    for key in ("distill_image", "distill_text"):
        assert torch.allclose(as_pool[key], as_update[key]), key


def test_zscl_reference_set_is_drawn_once_and_teacher_features_are_cached():
    clip = tiny_clip()
    calls: list[int] = []
    zscl = build("zscl", clip, reference_size=5)
    zscl.begin_task(reference_task(0, calls))
    tokens = zscl.reference_tokens
    assert calls == [5] and tokens.shape == (5, 3)
    cached = zscl._teacher_reference
    zscl.loss(batch_of(), clip.model)
    zscl.loss(batch_of(seed=1), clip.model)
    assert zscl._teacher_reference is cached  # no teacher text forward per step
    zscl.end_task(reference_task(0, calls))
    zscl.begin_task(reference_task(1, calls))
    assert calls == [5] and torch.equal(zscl.reference_tokens, tokens)  # fixed for the run
    assert zscl._teacher_reference is cached  # so are the teacher's features


def test_zscl_distils_over_a_random_subset_of_the_reference_set_each_step():
    clip = tiny_clip()
    zscl = build("zscl", clip, reference_size=20)
    zscl.begin_task(reference_task())
    seen = []
    for _ in range(3):
        rows = zscl._step_rows(zscl.reference_tokens, 8)
        assert rows.shape == (8,) and len(set(rows.tolist())) == 8  # as many as the batch, no repeats
        seen.append(rows.tolist())
    assert seen[0] != seen[1]
    whole = build("zscl", tiny_clip(), reference_size=20, reference_per_step=50)
    whole.begin_task(reference_task())
    assert whole._step_rows(whole.reference_tokens, 8) is None  # the whole set every step
    again = build("zscl", tiny_clip(), reference_size=20)
    again.begin_task(reference_task())
    assert again._step_rows(again.reference_tokens, 8).tolist() == seen[0]  # seeded by the run seed and task


def test_zscl_without_pool_captions_warns_and_uses_the_batch(caplog):
    clip = tiny_clip()
    zscl = build("zscl", clip)
    with caplog.at_level("WARNING"):
        zscl.begin_task(TaskInfo(0, 2, [], steps=1))
    assert "reference" in caplog.text and zscl.reference_tokens is None
    assert torch.isfinite(zscl.loss(batch_of(), clip.model).total)


def test_zscl_wise_deploys_and_continues_from_the_interpolation():
    clip = tiny_clip()
    theta0 = {k: v.clone() for k, v in clip.model.state_dict().items()}
    zscl = build("zscl", clip, reference="batch", ensemble="wise", wise_alpha=0.25)
    zscl.begin_task(TaskInfo(0, 2, [], steps=1))
    assert zscl.deploy_weights() is None  # mid-task: the model as it is
    nudge_(clip, 0.3)
    learned = {k: v.clone() for k, v in clip.model.state_dict().items()}
    zscl.end_task(TaskInfo(0, 2, [], steps=1))
    deployed = zscl.deploy_weights()
    for k in learned:
        assert torch.allclose(deployed[k], 0.75 * learned[k] + 0.25 * theta0[k], atol=1e-6), k
        assert not torch.equal(deployed[k], theta0[k])  # the learned weights are kept, not dropped
    zscl.begin_task(TaskInfo(1, 2, [], steps=1))
    start = zscl.training_weights()
    assert all(torch.equal(start[k], deployed[k]) for k in deployed)
    assert zscl.training_weights() is None and zscl.deploy_weights() is None


def test_zscl_average_is_the_mean_of_the_sampled_weights():
    clip = tiny_clip()
    zscl = build("zscl", clip, reference="batch", ensemble="average", average_every=2)
    zscl.begin_task(TaskInfo(0, 2, [], steps=6))
    assert zscl.training_weights() is None  # the runner asks once, after begin_task
    samples = [{k: v.clone() for k, v in clip.model.state_dict().items()}]  # the task's start weights count
    for step in range(6):
        nudge_(clip, 0.1, seed=step)
        if (step + 1) % 2 == 0:
            samples.append({k: v.clone() for k, v in clip.model.state_dict().items()})
        zscl.after_step(batch_of(), step)
    state = zscl.state_dict()
    zscl.end_task(TaskInfo(0, 2, [], steps=6))
    deployed = zscl.deploy_weights()
    for k in deployed:
        assert torch.allclose(deployed[k], sum(s[k] for s in samples) / 4, atol=1e-6), k
    resumed = build("zscl", copy.deepcopy(clip), reference="batch", ensemble="average", average_every=2)
    resumed.load_state_dict(state)
    resumed.end_task(TaskInfo(0, 2, [], steps=6))
    assert all(torch.equal(resumed.deploy_weights()[k], deployed[k]) for k in deployed)


def test_zscl_image_side_reads_theta0s_reference_text_features_not_the_students_text_tower():
    """Zheng et al.: the image-side logits are student images × θ0's fixed reference text features. Moving
    only the student's text tower leaves that term at 0 and moves the text side."""
    clip = tiny_clip()
    zscl = build("zscl", clip, reference="batch")
    zscl.begin_task(TaskInfo(0, 2, [], steps=1))
    with torch.no_grad():
        clip.model.token_embedding.weight.add_(torch.randn_like(clip.model.token_embedding.weight))
    parts = zscl.loss(batch_of(), clip.model).parts
    assert parts["distill_image"].abs() < 1e-6 and parts["distill_text"] > 1e-4


def test_zscl_l2_to_start_is_mu_times_the_squared_distance_to_the_tasks_start_weights():
    clip = tiny_clip()
    zscl = build("zscl", clip, reference="batch", l2_strength=0.5)
    zscl.begin_task(TaskInfo(0, 2, [], steps=1))
    zscl.training_weights()
    start = {n: p.detach().clone() for n, p in zscl.trainable_parameters()}
    nudge_(clip, 0.1)
    out = zscl.loss(batch_of(), clip.model)
    want = sum((p.detach() - start[n]).square().sum() for n, p in zscl.trainable_parameters())
    assert torch.allclose(out.parts["l2_to_start"], want)
    without = build("zscl", copy.deepcopy(clip), reference="batch").loss(batch_of(), clip.model)
    assert "l2_to_start" not in without.parts
    resumed = build("zscl", copy.deepcopy(clip), reference="batch", l2_strength=0.5)
    resumed.load_state_dict(zscl.state_dict())
    assert torch.allclose(resumed.loss(batch_of(), resumed.clip.model).parts["l2_to_start"], want)


def test_zscl_state_round_trip_keeps_the_reference_set():
    clip = tiny_clip()
    zscl = build("zscl", clip, reference_size=4)
    zscl.begin_task(reference_task())
    nudge_(clip, 0.2)
    before = zscl.loss(batch_of(), clip.model).total
    fresh = build("zscl", tiny_clip(), reference_size=4)  # θ0 teacher from the same base model
    fresh.load_state_dict(zscl.state_dict())
    assert torch.equal(fresh.reference_tokens, zscl.reference_tokens)
    assert torch.allclose(fresh.loss(batch_of(), clip.model).total, before)  # teacher features recomputed


@pytest.mark.parametrize(
    "options", [{"strength": 0}, {"temperature": -1}, {"reference": "web"}, {"ensemble": "ema"}, {"wise_alpha": 2}]
)
def test_bad_zscl_options_are_rejected(options):
    with pytest.raises(Exception, match="method"):
        build_method("zscl", options, tiny_clip())


# ----------------------------------------------------------------------------------------------
# Budget: the teacher's forward is charged


@pytest.fixture(scope="module")
def meta_costs():
    clip = meta_clip("fif-mini-rn32")
    costs = {}
    for name, options in [
        ("finetune", {}), ("lwf", {}), ("zscl", {"reference_size": 100}), ("zscl_batch", {"reference": "batch"}),
        ("zscl_all", {"reference_size": 100, "reference_per_step": 100}),
    ]:
        method = build_method(name.split("_")[0], options, clip)
        costs[name] = (method, measure_step_cost(clip, method, 8, "meta"))
    return costs


def test_teacher_forward_is_counted_in_the_step_cost(meta_costs):
    ft = meta_costs["finetune"][1]
    lwf = meta_costs["lwf"][1]
    # The teacher runs the whole forward (both towers and its logits) once more, with no backward.
    assert lwf.flops >= ft.flops + ft.forward_flops
    assert lwf.flops < 1.6 * ft.flops
    zscl, zscl_batch = meta_costs["zscl"][1], meta_costs["zscl_batch"][1]
    # pool reference: the batch's count of reference captions through the student's text tower per step
    assert meta_costs["zscl_all"][1].flops > zscl.flops > zscl_batch.flops > ft.flops


def test_zscl_charges_the_reference_features_once(meta_costs):
    zscl = meta_costs["zscl"][0]
    assert zscl.extra_cost(TaskInfo(0, 2, [], 0)).flops > 0
    assert zscl.extra_cost(TaskInfo(1, 2, [], 0)).flops == 0  # cached for the run: θ0 never changes
    assert meta_costs["zscl_batch"][0].extra_cost(TaskInfo(0, 2, [], 0)).flops == 0


@pytest.mark.parametrize("name", ["lwf", "zscl"])
def test_gradient_accumulation_gives_the_whole_batch_gradient(name):
    from fif.train.loop import accumulated_backward

    clip = tiny_clip()
    method = build(name, clip, **({"reference_size": 6} if name == "zscl" else {}))
    method.begin_task(reference_task())
    nudge_(clip, 0.2)
    twin = copy.deepcopy(method)
    batch = batch_of()
    clip.model.zero_grad(set_to_none=True)
    method.loss(batch, clip.model).total.backward()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    accumulated_backward(twin, twin.clip.model, batch, 2, scaler, lambda: torch.autocast("cpu", enabled=False))
    for (n, p), q in zip(clip.model.named_parameters(), twin.clip.model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{n}: {m}")
