"""The training step's recipe knobs: gradient accumulation, label smoothing, temperature, optimizer
reset/carry, grad checkpointing, weight-decay exclusions, the logit-scale clamp, precision, kernels.

Models are tiny and randomly initialised: ``fif-mini-rn32`` (ResNet image tower with BatchNorm), and
a one-layer ViT CLIP (LayerNorm only) where a test needs train-mode batch independence.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from fif.core.optim import OptimConfig, build_optimizer, carry_optimizer_state, no_weight_decay
from fif.data.batch import Batch
from fif.methods import build_method
from fif.model.clip import MAX_LOGIT_SCALE, Clip, build_clip
from fif.model.loss import ClipLoss, clip_contrastive_loss
from fif.train.loop import (
    accumulated_backward,
    batchnorm_accumulation_warning,
    enable_grad_checkpointing,
    fix_temperature_,
    train_task,
)

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster, and deterministic


@pytest.fixture(scope="module")
def rn_clip():
    torch.manual_seed(0)
    return build_clip("fif-mini-rn32")


@pytest.fixture(scope="module")
def vit_clip(rn_clip):
    """A one-block ViT CLIP: no batch statistics, so micro-batching is exact in train mode too."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32)
    text = CLIPTextCfg(context_length=rn_clip.model.context_length, vocab_size=49408, width=32, heads=2, layers=1)
    model = CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text, output_dict=True)
    return Clip(model, rn_clip.tokenizer, "vit-tiny", 32, rn_clip.mean, rn_clip.std)


def make_batch(clip, n: int = 16, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images = clip.normalize(torch.rand(n, 3, clip.image_size, clip.image_size, generator=g))
    tokens = clip.tokenize([f"a shape number {i} of {seed}" for i in range(n)])
    return Batch(images, tokens, torch.ones(n, dtype=torch.int8))


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def whole_batch_grads(method, model, batch):
    model.zero_grad(set_to_none=True)
    out = method.loss(batch, model)
    out.total.backward()
    return out.total.detach(), grads(model)


def accumulated_grads(method, model, batch, parts):
    model.zero_grad(set_to_none=True)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    out = accumulated_backward(method, model, batch, parts, scaler, lambda: torch.autocast("cpu", enabled=False))
    return out.total.detach(), grads(model)


def assert_same_grads(a: dict, b: dict, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------------------------------------
# Gradient accumulation


@pytest.mark.parametrize("parts", [4, 3])  # 3 gives uneven micro-batches (6, 6, 4)
def test_accumulation_gives_the_whole_batch_gradient(rn_clip, parts):
    clip = copy.deepcopy(rn_clip)
    clip.model.eval()  # BatchNorm on running stats: per-sample, so the comparison is exact
    method = build_method("finetune", {}, clip)
    batch = make_batch(clip)
    loss_big, g_big = whole_batch_grads(method, clip.model, batch)
    loss_acc, g_acc = accumulated_grads(method, clip.model, batch, parts)
    torch.testing.assert_close(loss_acc, loss_big)
    assert "logit_scale" in g_acc  # the temperature gets its gradient, once
    assert_same_grads(g_big, g_acc)


def test_summed_micro_batch_losses_are_a_different_objective(rn_clip):
    """Why accumulation needs the cached features: the CLIP loss of halves is not the loss of the whole."""
    clip = copy.deepcopy(rn_clip)
    clip.model.eval()
    method = build_method("finetune", {}, clip)
    batch = make_batch(clip)
    with torch.no_grad():
        whole = method.loss(batch, clip.model).total
        halves = sum(method.loss(mb, clip.model).total for mb in batch.split(2)) / 2
    assert abs(float(whole - halves)) > 0.1


def test_accumulated_update_equals_the_whole_batch_update(vit_clip):
    """Two AdamW steps in train mode (grad clip on): big batch vs 4 micro-batches give the same weights.

    eps is 1e-6 here, not 1e-8: the attention key bias has an exactly-zero gradient (softmax ignores a
    shift shared by all keys), and Adam divides its ~1e-10 rounding noise by ~eps, which would turn
    noise into visible updates in either run.
    """

    def run(parts):
        clip = copy.deepcopy(vit_clip)
        model = clip.model
        method = build_method("finetune", {}, clip)
        opt = build_optimizer(list(model.named_parameters()), 1e-3, OptimConfig(weight_decay=0.1, eps=1e-6))
        batches = [make_batch(clip, 16, seed=s) for s in range(2)]
        train_task(model, method, opt, batches, lambda s: 1e-3, 2, CPU, grad_clip=1.0, grad_accum_steps=parts)
        return model

    big, acc = run(1), run(4)
    moved = 0.0
    for (name, p_big), p_acc, p0 in zip(big.named_parameters(), acc.parameters(), vit_clip.model.parameters()):
        torch.testing.assert_close(p_acc, p_big, rtol=0, atol=2e-6, msg=lambda m: f"{name}: {m}")
        moved = max(moved, float((p_big - p0).detach().abs().max()))
    assert moved > 1e-3  # the steps did move the weights (two steps of lr 1e-3)


def test_accumulation_with_fp16_and_grad_scaler_on_cpu(rn_clip):
    clip = copy.deepcopy(rn_clip)
    method = build_method("finetune", {}, clip)
    opt = build_optimizer(list(clip.model.named_parameters()), 1e-4, OptimConfig())
    log = train_task(clip.model, method, opt, [make_batch(clip)], lambda s: 1e-4, 1, CPU, precision="fp16",
                     log_every=1, grad_accum_steps=2)
    assert log.steps == 1 and math.isfinite(log.losses[-1][1])


def test_batchnorm_models_get_a_warning_about_accumulation(rn_clip, vit_clip):
    assert "BatchNorm" in batchnorm_accumulation_warning(rn_clip.model, 4)
    assert batchnorm_accumulation_warning(rn_clip.model, 1) is None
    assert batchnorm_accumulation_warning(vit_clip.model, 4) is None


def test_accumulation_refuses_a_loss_on_other_inputs(rn_clip):
    clip = copy.deepcopy(rn_clip)
    method = build_method("finetune", {}, clip)
    batch = make_batch(clip, 8)

    class HalfBatch(type(method)):
        def loss(self, b, model):
            return super().loss(b.split(2)[0], model)

    odd = HalfBatch(clip, method.config)
    with pytest.raises(ValueError, match="grad_accum_steps=1"):
        accumulated_grads(odd, clip.model, batch, 2)


# ---------------------------------------------------------------------------------------------
# Loss and temperature


def test_label_smoothing_on_a_hand_example():
    """I = T = identity (2 pairs), scale 1: logits = eye(2), softmax row = (e, 1) / (1 + e).

    Targets with smoothing ε over C = 2 classes: (1 − ε/2, ε/2), so each direction's CE is
    log(1 + e) − (1 − ε/2): ε = 0 gives log(1 + e) − 1, ε = 0.2 gives log(1 + e) − 0.9.
    """
    eye = torch.eye(2)
    one = torch.tensor(1.0)
    base = math.log(1 + math.e)
    assert float(clip_contrastive_loss(eye, eye, one)) == pytest.approx(base - 1.0, abs=1e-6)
    assert float(clip_contrastive_loss(eye, eye, one, label_smoothing=0.2)) == pytest.approx(base - 0.9, abs=1e-6)


def test_label_smoothing_reaches_the_method_loss(rn_clip):
    clip = copy.deepcopy(rn_clip)
    batch = make_batch(clip, 8)
    with torch.no_grad():
        plain = build_method("finetune", {}, clip).loss(batch, clip.model).total
        smooth_method = build_method("finetune", {}, clip, ClipLoss(label_smoothing=0.1))
        smooth = smooth_method.loss(batch, clip.model).total
        img, txt, scale = clip.model(batch.images, batch.tokens).values()
        expected = clip_contrastive_loss(img, txt, scale, label_smoothing=0.1)
    assert smooth_method.clip_loss == ClipLoss(label_smoothing=0.1)
    torch.testing.assert_close(smooth, expected)
    assert float(smooth) != pytest.approx(float(plain))


def test_fixed_temperature_leaves_logit_scale_unchanged(rn_clip):
    clip = copy.deepcopy(rn_clip)
    fix_temperature_(clip.model, 50.0)
    before = clip.model.logit_scale.detach().clone()
    method = build_method("finetune", {}, clip)
    opt = build_optimizer(method.trainable_parameters(), 1e-2, OptimConfig())
    assert all(p is not clip.model.logit_scale for g in opt.param_groups for p in g["params"])
    train_task(clip.model, method, opt, [make_batch(clip, 8, s) for s in range(2)], lambda s: 1e-2, 2, CPU)
    assert torch.equal(clip.model.logit_scale, before)
    assert float(before.exp()) == pytest.approx(50.0)


def test_learnable_temperature_moves_and_is_clamped_at_ln_100(rn_clip):
    clip = copy.deepcopy(rn_clip)
    with torch.no_grad():
        clip.model.logit_scale.fill_(6.0)  # above ln 100 ≈ 4.605
    method = build_method("finetune", {}, clip)
    opt = build_optimizer(method.trainable_parameters(), 1e-3, OptimConfig())
    train_task(clip.model, method, opt, [make_batch(clip, 8)], lambda s: 1e-3, 1, CPU)
    assert float(clip.model.logit_scale.detach()) == pytest.approx(MAX_LOGIT_SCALE)
    assert MAX_LOGIT_SCALE == pytest.approx(math.log(100.0))


def test_fix_temperature_rejects_out_of_range(rn_clip):
    with pytest.raises(ValueError, match=r"\(0, 100\]"):
        fix_temperature_(copy.deepcopy(rn_clip).model, 150.0)


# ---------------------------------------------------------------------------------------------
# Optimizer


def test_optimizer_reset_vs_carry_between_tasks(rn_clip):
    clip = copy.deepcopy(rn_clip)
    method = build_method("finetune", {}, clip)
    params = method.trainable_parameters()
    task1 = build_optimizer(params, 1e-4, OptimConfig())
    train_task(clip.model, method, task1, [make_batch(clip, 8, s) for s in range(2)], lambda s: 1e-4, 2, CPU)
    assert len(task1.state) == len(params)

    reset = build_optimizer(params, 1e-4, OptimConfig())  # FiF: fresh AdamW every task
    assert len(reset.state) == 0

    carried = build_optimizer(params, 1e-4, OptimConfig())
    assert carry_optimizer_state(task1, carried) == len(params)
    p = clip.model.text_projection
    assert float(carried.state[p]["step"]) == 2.0
    assert torch.equal(carried.state[p]["exp_avg"], task1.state[p]["exp_avg"])
    train_task(clip.model, method, carried, [make_batch(clip, 8, 5)], lambda s: 1e-4, 1, CPU)
    assert float(carried.state[p]["step"]) == 3.0  # the moments continue


def test_carry_starts_new_parameters_fresh(rn_clip):
    clip = copy.deepcopy(rn_clip)
    method = build_method("finetune", {}, clip)
    params = method.trainable_parameters()
    task1 = build_optimizer(params[:5], 1e-4, OptimConfig())
    train_task(clip.model, method, task1, [make_batch(clip, 8)], lambda s: 1e-4, 1, CPU)
    task2 = build_optimizer(params, 1e-4, OptimConfig())
    assert carry_optimizer_state(task1, task2) == 5
    assert carry_optimizer_state(None, task2) == 0


def test_weight_decay_exclusions(rn_clip):
    clip = copy.deepcopy(rn_clip)
    named = list(clip.model.named_parameters())
    opt = build_optimizer(named, 0.1, OptimConfig(weight_decay=0.5))
    no_decay, decay = ({id(p) for p in g["params"]} for g in opt.param_groups)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.5]
    by_name = dict(named)
    for name in ("logit_scale", "ln_final.weight", "ln_final.bias", "visual.bn1.weight", "visual.bn1.bias",
                 "transformer.resblocks.0.attn.in_proj_bias", "positional_embedding"):
        if name == "positional_embedding":
            assert id(by_name[name]) in decay  # a matrix: decayed, as in open_clip
        else:
            assert id(by_name[name]) in no_decay, name
    assert id(by_name["text_projection"]) in decay and id(by_name["visual.conv1.weight"]) in decay
    assert all(no_weight_decay(n, p) == (id(p) in no_decay) for n, p in named)

    # Behaviour: with zero gradients AdamW only decays: decayed tensors shrink by (1 − lr·wd), the rest stay.
    before = {n: p.detach().clone() for n, p in named}
    for _, p in named:
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(by_name["text_projection"], before["text_projection"] * (1 - 0.1 * 0.5))
    assert torch.equal(by_name["ln_final.weight"], before["ln_final.weight"])
    assert torch.equal(by_name["logit_scale"], before["logit_scale"])


@pytest.mark.parametrize("name,impl", [("adamw", "for_loop"), ("adamw", "foreach"), ("adamw", "fused"),
                                       ("sgd", "for_loop"), ("sgd", "foreach")])
def test_optimizer_kernels_agree(rn_clip, name, impl):
    def step(cfg):
        model = copy.deepcopy(rn_clip.model)
        named = list(model.named_parameters())
        opt = build_optimizer(named, 1e-3, cfg)
        g = torch.Generator().manual_seed(0)
        for _, p in named:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
        return model

    ref = step(OptimConfig(name=name, impl="for_loop"))
    other = step(OptimConfig(name=name, impl=impl))
    for a, b in zip(ref.parameters(), other.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_auto_picks_fused_adamw_on_cpu_and_torchs_default_sgd(rn_clip):
    named = list(rn_clip.model.named_parameters())
    assert build_optimizer(named, 1e-3, OptimConfig(impl="auto")).defaults["fused"] is True
    assert not build_optimizer(named, 1e-3, OptimConfig(name="sgd", impl="auto")).defaults.get("fused")
    assert not build_optimizer(named, 1e-3, OptimConfig(impl="for_loop")).defaults.get("fused")


def test_unknown_optimizer_is_refused(rn_clip):
    with pytest.raises(ValueError, match="adamw, sgd"):
        build_optimizer(list(rn_clip.model.named_parameters()), 1e-3, OptimConfig(name="lion"))


# ---------------------------------------------------------------------------------------------
# Gradient checkpointing


def test_grad_checkpointing_gives_the_same_gradients(vit_clip):
    clip = copy.deepcopy(vit_clip)
    clip.model.train()
    method = build_method("finetune", {}, clip)
    batch = make_batch(clip, 8)
    loss_plain, g_plain = whole_batch_grads(method, clip.model, batch)
    enable_grad_checkpointing(clip.model)
    assert clip.model.transformer.grad_checkpointing and clip.model.visual.transformer.grad_checkpointing
    loss_ckpt, g_ckpt = whole_batch_grads(method, clip.model, batch)
    torch.testing.assert_close(loss_ckpt, loss_plain)
    assert_same_grads(g_plain, g_ckpt, rtol=1e-5, atol=1e-7)


def test_grad_checkpointing_on_the_mini_resnet_gives_the_same_gradients(rn_clip):
    """fif-mini-rn32's text tower has open_clip's custom blocks (checkpointed by fif, see train.py)."""
    import pickle

    clip = copy.deepcopy(rn_clip)
    clip.model.eval()  # the same BatchNorm statistics in both passes
    method = build_method("finetune", {}, clip)
    batch = make_batch(clip, 8)
    keys = list(clip.model.state_dict())
    loss_plain, g_plain = whole_batch_grads(method, clip.model, batch)
    enable_grad_checkpointing(clip.model)
    clip.model.train()
    for m in clip.model.visual.modules():  # keep BatchNorm on running stats, checkpoint the text blocks
        m.train(False)
    block = clip.model.transformer.resblocks[0]
    assert type(block).__name__ == "CheckpointedCustomBlock"
    loss_ckpt, g_ckpt = whole_batch_grads(method, clip.model, batch)
    torch.testing.assert_close(loss_ckpt, loss_plain)
    assert_same_grads(g_plain, g_ckpt, rtol=1e-5, atol=1e-7)
    assert list(clip.model.state_dict()) == keys
    assert type(copy.deepcopy(clip.model).transformer.resblocks[0]) is type(block)
    assert type(pickle.loads(pickle.dumps(clip.model)).transformer.resblocks[0]) is type(block)


# ---------------------------------------------------------------------------------------------
# Wiring through the runner (one small run of two tasks)


@pytest.mark.slow
def test_recipe_knobs_reach_the_runner(tmp_path):
    from fif.config import load_config
    from fif.runner.setup import setup
    from fif.runner.stream import run_task
    from small_run import SMALL_RUN

    cfg = load_config("mini", [
        *SMALL_RUN, "eval.datasets=[mini_digits,mini_letters]",
        "train.optimizer_reset=false", "train.grad_accum_steps=2", "train.label_smoothing=0.1",
        "train.temperature=fixed", "train.fixed_logit_scale=50", "train.grad_checkpointing=true",
    ])
    ctx, state = setup(cfg, tmp_path)  # the run's spec and its state
    assert ctx.method.clip_loss == ClipLoss(label_smoothing=0.1)
    assert type(ctx.clip.model.transformer.resblocks[0]).__name__ == "CheckpointedCustomBlock"
    steps = []
    for task in ctx.tasks:
        run_task(ctx, state, task)
        steps.append(state.ledger.tasks[task.index].steps_done)
        assert float(ctx.clip.model.logit_scale.detach().exp()) == pytest.approx(50.0)
        p = ctx.clip.model.text_projection
        assert float(state.optimizer.state[p]["step"]) == sum(steps)  # moments carried across tasks
    assert all(s > 0 for s in steps)


def test_device_ahead_hands_out_each_batch_once_in_order_on_the_device():
    from fif.train.loop import device_ahead

    pulled = []

    def batches():
        for i in range(3):
            pulled.append(i)
            yield Batch(torch.full((2, 3, 4, 4), float(i)), torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, dtype=torch.int8))

    out = list(device_ahead(batches(), torch.device("cpu")))
    assert [int(b.images[0, 0, 0, 0]) for b in out] == [0, 1, 2] and pulled == [0, 1, 2]
    assert all(b.images.device.type == "cpu" for b in out)
