"""ER, DER, DER++ and GDumb do what their papers say (the contract suite covers the shared hooks).

The checks run on a tiny linear CLIP (images (B, 3, 2, 2), 3 tokens); the budget checks count FLOPs on a
meta copy of the mini model. The reservoir's statistics are checked against Algorithm R's promise: every
item of the stream is held with the same probability, size / items seen.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clip_stand_in import TinyClip
from fif.budget import measure_step_cost, meta_clip
from fif.data.batch import Batch
from fif.methods import TaskInfo, build_method, freeze_all_but
from fif.methods.replay import embedding_mse, masked_clip_loss, reservoir_slots, sample_slots
from fif.model.clip import Clip
from fif.model.loss import clip_contrastive_loss
from task_data import MemoryTaskData


def tiny_clip(seed: int = 0) -> Clip:
    torch.manual_seed(seed)
    tokenize = lambda texts: torch.zeros(len(texts), 3, dtype=torch.long)  # noqa: E731
    return Clip(TinyClip(vocab=64), tokenize, "tiny", 2, (0.5,) * 3, (0.25,) * 3)


def pixels_batch(ids, source=None, seed: int = 0) -> Batch:
    """A batch whose images are exact uint8 pixels (so uint8 storage is lossless) and whose first token
    is the sample's id (to trace what the buffer holds)."""
    n = len(ids)
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 3, 2, 2), generator=g).float() / 255.0
    images = (pixels - 0.5) / 0.25
    tokens = torch.stack([torch.as_tensor(ids), torch.randint(0, 64, (n,), generator=g), torch.zeros(n, dtype=torch.long)], 1)
    src = torch.tensor(source if source is not None else [1] * n, dtype=torch.int8)
    return Batch(images, tokens.long(), src)


def build(name: str, clip: Clip, **options):
    method = build_method(name, options, clip)
    freeze_all_but(clip.model, method.trainable_parameters())
    return method


def held_ids(method) -> list[int]:
    buf = method.core.buffer
    return buf.tokens[: int(buf.count()), 0].tolist()


# ----------------------------------------------------------------------------------------------
# The math


def test_masked_clip_loss_is_the_clip_loss_on_the_valid_rows():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    txt = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    scale = torch.tensor(7.0)
    for smoothing in (0.0, 0.1):
        every = masked_clip_loss(img, txt, scale, torch.ones(6, dtype=torch.bool), smoothing)
        assert torch.allclose(every, clip_contrastive_loss(img, txt, scale, smoothing), atol=1e-6)
        valid = torch.tensor([True, False, True, True, False, True])
        some = masked_clip_loss(img, txt, scale, valid, smoothing)
        assert torch.allclose(some, clip_contrastive_loss(img[valid], txt[valid], scale, smoothing), atol=1e-5)
    assert masked_clip_loss(img, txt, scale, torch.zeros(6, dtype=torch.bool)) == 0


def test_der_embedding_mse_by_hand():
    f_img = torch.tensor([[1.0, 0.0], [0.6, 0.8], [5.0, 5.0]])
    z_img = torch.tensor([[0.0, 1.0], [0.6, 0.8], [0.0, 0.0]])
    f_txt = torch.tensor([[0.0, 1.0], [1.0, 0.0], [5.0, 5.0]])
    z_txt = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    valid = torch.tensor([True, True, False])  # the third row is an empty slot: left out
    # row 0: ‖(1,−1)‖² + 0 = 2; row 1: 0 + ‖(1,−1)‖² = 2 → mean 2
    assert embedding_mse(f_img, f_txt, z_img, z_txt, valid) == pytest.approx(2.0)
    assert embedding_mse(f_img, f_txt, z_img, z_txt, torch.zeros(3, dtype=torch.bool)) == 0


def sequential_algorithm_r(seen: int, take: list[bool], uniform: list[float], capacity: int) -> dict[int, int]:
    """Vitter's algorithm R, one candidate at a time: {slot: batch row that ends up in it}."""
    out = {}
    for row, (t, u) in enumerate(zip(take, uniform)):
        if not t:
            continue
        slot = seen if seen < capacity else math.floor(u * (seen + 1))
        if slot < capacity:
            out[slot] = row
        seen += 1
    return out


def test_batched_reservoir_slots_equal_the_sequential_algorithm():
    rng = np.random.default_rng(0)
    for seen, capacity, rows in [(0, 5, 8), (3, 5, 8), (40, 5, 16), (1000, 10, 32), (7, 100, 8)]:
        for _ in range(20):
            take = rng.random(rows) < 0.7
            uniform = rng.random(rows)
            dest, offered = reservoir_slots(
                torch.tensor(seen), torch.as_tensor(take), torch.as_tensor(uniform, dtype=torch.float64), capacity
            )
            expected = sequential_algorithm_r(seen, take.tolist(), uniform.tolist(), capacity)
            got = {int(s): r for r, s in enumerate(dest.tolist()) if s < capacity}
            assert got == expected and int(offered) == int(take.sum())


def test_sample_slots_draw_filled_slots_without_replacement():
    g = torch.Generator().manual_seed(0)
    slots, valid = sample_slots(10, torch.tensor(10), 6, g, torch.device("cpu"))
    assert valid.all() and len(set(slots.tolist())) == 6
    slots, valid = sample_slots(10, torch.tensor(3), 6, g, torch.device("cpu"))
    assert sorted(slots[valid].tolist()) == [0, 1, 2] and valid.sum() == 3  # the empty slots come back invalid
    slots, valid = sample_slots(4, torch.tensor(4), 6, g, torch.device("cpu"))  # more rows than slots
    assert valid.tolist() == [True] * 4 + [False] * 2 and sorted(slots[:4].tolist()) == [0, 1, 2, 3]


# ----------------------------------------------------------------------------------------------
# ER's reservoir


def test_reservoir_holds_a_uniform_sample_of_the_update_stream():
    """Each of 400 update samples (in batches of 20, mixed with pretraining rows) ends up held with
    probability 20/400; over 100 seeds, held counts per block of 40 ids pass a χ² test."""
    size, items, trials, block, rows = 20, 400, 100, 40, 20
    held = np.zeros(items)
    er = build("er", tiny_clip(), buffer_size=size)
    ids = np.arange(items)
    for trial in range(trials):
        fresh = copy.deepcopy(er)
        fresh.begin_task(TaskInfo(0, 1, [], steps=1, seed=trial))
        for start in range(0, items, rows):
            chunk = ids[start : start + rows].tolist()
            batch = pixels_batch(chunk + [0, 0], source=[1] * len(chunk) + [0, 0])  # 2 pretraining rows: never stored
            fresh.after_step(batch, start // rows)
        got = held_ids(fresh)
        assert len(got) == size and len(set(got)) == size
        held[got] += 1
    counts = held.reshape(-1, block).sum(1)
    expected = trials * size / (items // block)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 27.9, (chi2, counts)  # χ²(9 dof) at p = 0.001
    first, last = held[:40].mean(), held[-40:].mean()
    assert abs(first - last) < 0.35 * trials * size / items  # no bias towards early or late items


def test_reservoir_never_exceeds_its_size_and_keeps_only_update_rows():
    er = build("er", tiny_clip(), buffer_size=5)
    er.begin_task(TaskInfo(0, 1, [], steps=1, seed=3))
    rows = er.core.buffer.images.shape[0]
    for step in range(12):
        ids = list(range(100 * step, 100 * step + 4))
        er.after_step(pixels_batch(ids + [9999, 9999], source=[1, 1, 1, 1, 0, 2], seed=step), step)
        assert int(er.core.buffer.count()) == min(5, 4 * (step + 1))
    assert er.core.buffer.images.shape[0] == rows == 6  # five slots and the write sink
    assert int(er.core.buffer.seen) == 48
    assert 9999 not in held_ids(er)


def test_reservoir_is_seeded_by_the_run_seed():
    def fill(seed):
        er = build("er", tiny_clip(), buffer_size=4)
        er.begin_task(TaskInfo(0, 1, [], steps=1, seed=seed))
        for step in range(10):
            er.after_step(pixels_batch(list(range(8 * step, 8 * step + 8))), step)
        return held_ids(er)

    assert fill(1) == fill(1)
    assert fill(1) != fill(2)


def test_buffer_stores_images_and_tokens_exactly():
    er = build("er", tiny_clip(), buffer_size=8)
    batch = pixels_batch(list(range(8)))
    er.after_step(batch, 0)
    buf = er.core.buffer
    assert torch.equal(buf.tokens[:8], batch.tokens)
    assert torch.allclose(buf.codec.decode(buf.images[:8]), batch.images, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# ER's loss


def test_er_with_an_empty_buffer_is_the_clip_loss():
    clip = tiny_clip()
    batch = pixels_batch(list(range(8)))
    plain = clip_contrastive_loss(*(lambda o: (o["image_features"], o["text_features"], o["logit_scale"]))(clip.model(batch.images, batch.tokens)))
    for combine in ("concat", "add"):
        er = build("er", copy.deepcopy(clip), combine=combine)
        assert torch.allclose(er.loss(batch, clip.model).total, plain, atol=1e-6), combine


def test_er_replays_the_buffer_at_the_models_temperature():
    clip = tiny_clip()
    er = build("er", clip, buffer_size=4, replay_batch_size=4, combine="add")
    stored = pixels_batch([1, 2, 3, 4], seed=5)
    er.after_step(stored, 0)  # the buffer holds exactly these four pairs; a replay draws all of them
    with torch.no_grad():
        clip.model.logit_scale.fill_(math.log(30.0))
    out = er.loss(pixels_batch([7, 8, 9, 10], seed=6), clip.model)
    o = clip.model(stored.images, stored.tokens)
    expected = clip_contrastive_loss(o["image_features"], o["text_features"], torch.tensor(30.0))
    assert torch.allclose(out.parts["replay"], expected, atol=1e-5)
    assert torch.allclose(out.total, out.parts["clip"] + out.parts["replay"])


def test_er_concat_uses_replayed_pairs_as_anchors_and_negatives():
    clip = tiny_clip()
    er = build("er", clip, buffer_size=4, replay_batch_size=4)
    stored = pixels_batch([1, 2, 3, 4], seed=5)
    er.after_step(stored, 0)
    batch = pixels_batch([7, 8, 9, 10], seed=6)
    out = er.loss(batch, clip.model)
    both = Batch(torch.cat([batch.images, stored.images]), torch.cat([batch.tokens, stored.tokens]), torch.ones(8))
    o = clip.model(both.images, both.tokens)
    # The replayed rows come in a random order; the symmetric CLIP loss does not depend on the order.
    expected = clip_contrastive_loss(o["image_features"], o["text_features"], o["logit_scale"])
    assert torch.allclose(out.total, expected, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# DER, DER++


def test_der_stores_the_embeddings_of_the_model_at_insertion():
    clip = tiny_clip()
    der = build("der", clip, buffer_size=8, image_dtype="float16")
    batch = pixels_batch(list(range(8)))
    der.loss(batch, clip.model)
    with torch.no_grad():
        expected = clip.model(batch.images, batch.tokens)
        for p in clip.model.parameters():  # the optimizer step happens between loss and after_step
            p.add_(0.5)
    der.after_step(batch, 0)
    stored = der.core.buffer.embeddings
    assert torch.allclose(stored["image"][:8], expected["image_features"])
    assert torch.allclose(stored["text"][:8], expected["text_features"])


def test_der_term_is_zero_for_an_unchanged_model_and_grows_as_it_moves():
    clip = tiny_clip()
    der = build("der", clip, buffer_size=8, image_dtype="float16", alpha=2.0)
    batch = pixels_batch(list(range(8)))
    der.loss(batch, clip.model)
    der.after_step(batch, 0)
    mse = [float(der.loss(batch, clip.model).parts["embedding_mse"])]
    for scale in (0.05, 0.3):
        g = torch.Generator().manual_seed(1)
        moved = copy.deepcopy(clip.model)
        with torch.no_grad():
            for p in moved.parameters():
                p.add_(scale * torch.randn(p.shape, generator=g))
        mse.append(float(der.loss(batch, moved).parts["embedding_mse"]))
    assert mse[0] < 1e-6 and 0 < mse[1] < mse[2]
    out = der.loss(batch, moved)
    assert torch.allclose(out.total, out.parts["clip"] + 2.0 * out.parts["embedding_mse"])


def test_derpp_adds_the_clip_loss_on_replayed_pairs():
    clip = tiny_clip()
    derpp = build("derpp", clip, buffer_size=4, replay_batch_size=4, alpha=1.0, beta=0.5)
    stored = pixels_batch([1, 2, 3, 4], seed=5)
    derpp.loss(stored, clip.model)
    derpp.after_step(stored, 0)
    out = derpp.loss(pixels_batch([7, 8, 9, 10], seed=6), clip.model)
    o = clip.model(stored.images, stored.tokens)
    assert torch.allclose(out.parts["replay"], clip_contrastive_loss(o["image_features"], o["text_features"], o["logit_scale"]), atol=1e-5)
    assert torch.allclose(out.total, out.parts["clip"] + out.parts["embedding_mse"] + 0.5 * out.parts["replay"])


@pytest.mark.parametrize("name", ["er", "der", "derpp"])
def test_buffer_state_round_trip_is_exact(name):
    clip = tiny_clip()
    method = build(name, clip, buffer_size=6, replay_batch_size=4)
    method.begin_task(TaskInfo(0, 2, [], steps=1, seed=11))
    for step in range(5):
        batch = pixels_batch(list(range(8 * step, 8 * step + 8)), seed=step)
        method.loss(batch, clip.model)
        method.after_step(batch, step)
    state = method.state_dict()
    fresh = build(name, tiny_clip(seed=3), buffer_size=6, replay_batch_size=4)
    fresh.load_state_dict(state)
    for key, value in fresh.state_dict()["buffer"].items():
        if isinstance(value, dict):
            assert all(torch.equal(v, state["buffer"][key][k]) for k, v in value.items()), key
        else:
            assert torch.equal(value, state["buffer"][key]), key
    batch = pixels_batch(list(range(100, 108)), seed=9)  # the same next replay and the same next insertion
    assert torch.equal(method.loss(batch, clip.model).total, fresh.loss(batch, clip.model).total)
    method.after_step(batch, 5)
    fresh.after_step(batch, 5)
    assert torch.equal(method.core.buffer.tokens, fresh.core.buffer.tokens)


def test_load_state_dict_rejects_another_buffer_size():
    er = build("er", tiny_clip(), buffer_size=6)
    with pytest.raises(ValueError, match="buffer"):
        build("er", tiny_clip(), buffer_size=5).load_state_dict(er.state_dict())


# ----------------------------------------------------------------------------------------------
# GDumb


def labelled_task(index: int, concepts: list[str], per_class: int, start_id: int = 0) -> TaskInfo:
    """A TaskInfo whose batches(b) hold ``per_class`` labelled samples of each concept, interleaved."""
    labels = torch.arange(len(concepts)).repeat_interleave(per_class)
    ids = list(range(start_id, start_id + len(labels)))
    data = pixels_batch(ids, seed=index)

    rows = Batch(data.images, data.tokens, data.source, labels)
    return TaskInfo(index, 3, concepts, steps=1, num_samples=len(ids), seed=5, data=MemoryTaskData(rows))


def test_gdumb_memory_is_class_balanced_across_tasks():
    gdumb = build("gdumb", tiny_clip(), memory_size=6, fill_batch_size=4)
    gdumb.begin_task(labelled_task(0, ["d+++a"], per_class=10))
    mem = gdumb.memory
    assert mem.count == 6 and mem.class_counts().tolist() == [6]
    gdumb.begin_task(labelled_task(1, ["d+++b", "d+++c"], per_class=10, start_id=100))
    assert mem.classes == ["d+++a", "d+++b", "d+++c"] and mem.class_counts().tolist() == [2, 2, 2]
    gdumb.begin_task(labelled_task(2, ["e+++a", "e+++b", "e+++c"], per_class=1, start_id=200))
    counts = mem.class_counts()
    assert counts.sum() == 6 and counts.max() - counts.min() <= 1  # 6 slots over 6 classes: one each
    assert mem.images.shape[0] == 6  # bounded


def test_gdumb_retrains_from_theta0_on_the_memory_only_and_deploys_what_it_learned():
    clip = tiny_clip()
    theta0 = {k: v.clone() for k, v in clip.model.state_dict().items()}
    gdumb = build("gdumb", clip, memory_size=6)
    gdumb.begin_task(labelled_task(0, ["d+++a", "d+++b"], per_class=3))
    start = gdumb.training_weights()
    assert all(torch.equal(start[k], theta0[k]) for k in theta0)
    assert gdumb.training_weights() is None  # once per task
    state = gdumb.generator.get_state()
    a = gdumb.loss(pixels_batch(list(range(6)), seed=1), clip.model).total
    gdumb.generator.set_state(state)
    b = gdumb.loss(pixels_batch(list(range(50, 56)), seed=2), clip.model).total
    assert torch.equal(a, b)  # the batch is not read: the memory is
    with torch.no_grad():
        for p in clip.model.parameters():
            p.add_(0.1)
    gdumb.end_task(labelled_task(0, ["d+++a", "d+++b"], per_class=3))
    assert gdumb.deploy_weights() is None  # the learned weights are deployed, not θ0
    gdumb.begin_task(labelled_task(1, ["d+++c"], per_class=3, start_id=10))
    start = gdumb.training_weights()
    assert all(torch.equal(start[k], theta0[k]) for k in theta0)


def test_gdumb_state_round_trip_restores_the_memory_exactly():
    gdumb = build("gdumb", tiny_clip(), memory_size=6)
    gdumb.begin_task(labelled_task(0, ["d+++a", "d+++b"], per_class=5))
    fresh = build("gdumb", tiny_clip(), memory_size=6)
    fresh.load_state_dict(gdumb.state_dict())
    assert torch.equal(fresh.memory.images, gdumb.memory.images) and torch.equal(fresh.memory.tokens, gdumb.memory.tokens)
    assert fresh.memory.labels.tolist() == gdumb.memory.labels.tolist() and fresh.memory.classes == gdumb.memory.classes
    batch = pixels_batch(list(range(6)))
    assert torch.equal(fresh.loss(batch, fresh.clip.model).total, gdumb.loss(batch, fresh.clip.model).total)


# ----------------------------------------------------------------------------------------------
# Budget


@pytest.fixture(scope="module")
def meta_costs():
    clip = meta_clip("fif-mini-rn32")
    out = {}
    for name, options in [("finetune", {}), ("er", {}), ("der", {}), ("derpp", {}), ("gdumb", {}), ("er_half", {"replay_batch_size": 4})]:
        method = build_method(name.split("_")[0], options, clip)
        out[name] = measure_step_cost(clip, method, 8, "meta")
    return out


def test_replay_forward_is_charged_from_the_first_step(meta_costs):
    """The step cost is measured before any sample is stored; the replay minibatch is charged anyway."""
    ft = meta_costs["finetune"].flops
    assert meta_costs["er"].flops > 1.9 * ft  # as many replayed pairs as the batch
    assert ft < meta_costs["er_half"].flops < meta_costs["er"].flops
    assert meta_costs["der"].flops > 1.9 * ft and meta_costs["derpp"].flops >= meta_costs["der"].flops


def test_gdumb_retrain_is_charged_as_full_clip_steps(meta_costs):
    """GDumb's task steps are its retrain on the memory: each one a CLIP step at the batch size."""
    assert meta_costs["gdumb"].flops == meta_costs["finetune"].flops
    gdumb = build_method("gdumb", {}, tiny_clip())
    assert gdumb.extra_cost(TaskInfo(0, 2, [], 0)).flops == 0  # filling the memory reads data, computes nothing


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to detect host syncs")
@pytest.mark.parametrize("name", ["er", "der", "derpp"])
def test_after_step_does_not_sync_on_cuda(name):
    clip = tiny_clip()
    clip.model.cuda()
    method = build(name, clip, buffer_size=6)
    method.begin_task(TaskInfo(0, 1, [], steps=1, seed=0))
    for step in range(4):
        cpu = pixels_batch(list(range(8 * step, 8 * step + 8)), seed=step)
        batch = Batch(cpu.images.cuda(), cpu.tokens.cuda(), cpu.source.cuda())
        method.loss(batch, clip.model)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            method.after_step(batch, step)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert int(method.core.buffer.count()) == 6


def _grads(method, model, batch, parts):
    from fif.train.loop import accumulated_backward

    model.zero_grad(set_to_none=True)
    if parts == 1:
        method.loss(batch, model).total.backward()
    else:
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        accumulated_backward(method, model, batch, parts, scaler, lambda: torch.autocast("cpu", enabled=False))
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["er", "der", "derpp", "gdumb"])
def test_gradient_accumulation_gives_the_whole_batch_gradient(name):
    clip = tiny_clip()
    method = build(name, clip, **({"memory_size": 6} if name == "gdumb" else {"buffer_size": 6}))
    if name == "gdumb":
        method.begin_task(labelled_task(0, ["d+++a", "d+++b"], per_class=4))
    else:
        for step in range(2):
            b = pixels_batch(list(range(8 * step, 8 * step + 8)), seed=step)
            method.loss(b, clip.model)
            method.after_step(b, step)
    twin = copy.deepcopy(method)  # the same generator state: the same replay draw
    batch = pixels_batch(list(range(50, 58)), seed=7)
    whole, accumulated = _grads(method, clip.model, batch, 1), _grads(twin, twin.clip.model, batch, 2)
    assert whole.keys() == accumulated.keys()
    for n in whole:
        torch.testing.assert_close(whole[n], accumulated[n], rtol=1e-4, atol=1e-6)
