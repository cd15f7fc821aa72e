"""The PEFT family (fif.methods.peft): LoRA, DoRA, VeRA adapters and GaLore's projected AdamW.

What the papers say the methods do, on the mini model (ModifiedResNet image tower with attention
pooling, custom-block text tower) and a tiny ViT CLIP with nn.MultiheadAttention blocks. The contract
suite (test_contract.py) covers the shared basics.
"""

from __future__ import annotations

import copy

import open_clip
import pytest
import torch
from safetensors.torch import load, save
from torch import nn

from fif.budget import mafs_per_step, measure_step_cost, meta_clip
from fif.core.optim import OptimConfig, build_optimizer
from fif.data.batch import Batch
from fif.methods import TaskInfo, build_method, freeze_all_but
from fif.methods.peft.attention import LinearMultiheadAttention, linearize_attention, restore_attention
from fif.methods.peft.galore import GaLoreAdamW, top_singular_vectors
from fif.methods.peft.inject import adapter_parameters, tuner_layers
from fif.model.clip import Clip, build_clip

ADAPTERS = ["lora", "dora", "vera"]


@pytest.fixture(scope="module")
def base_clip():
    torch.manual_seed(0)
    return build_clip("fif-mini-rn32")


def tiny_vit_clip(block_type: str | None = None) -> Clip:
    """A small open_clip ViT CLIP; default blocks use nn.MultiheadAttention."""
    torch.manual_seed(0)
    extra = {"block_type": block_type} if block_type else {}
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=8, head_width=16, **extra),
        text_cfg=dict(context_length=16, vocab_size=100, width=32, heads=2, layers=2, **extra),
        output_dict=True,
    )
    tokenizer = lambda texts: torch.stack([torch.arange(16) % 100 for _ in texts])  # noqa: E731
    return Clip(model, tokenizer, "tiny-vit", 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def batch_for(clip: Clip, n: int = 8, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images = clip.normalize(torch.rand(n, 3, clip.image_size, clip.image_size, generator=g))
    tokens = clip.tokenize([f"a shape number {i}" for i in range(n)])
    return Batch(images, tokens, torch.ones(n, dtype=torch.int8))


def features(model: nn.Module, batch: Batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(batch.images, batch.tokens)
    return torch.cat([out["image_features"], out["text_features"]])


def adapted(name: str, clip: Clip, **options):
    clip = copy.deepcopy(clip)
    method = build_method(name, options, clip)
    freeze_all_but(clip.model, method.trainable_parameters())
    return method, clip


def perturb_adapters_(model: nn.Module, seed: int = 1) -> None:
    """Give every adapter parameter a non-trivial value (as if trained)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in adapter_parameters(model):
            p.add_(0.05 * torch.randn(p.shape, generator=g))


# ----------------------------------------------------------------------------------------------
# Attention as Linear modules


@pytest.mark.parametrize("block_type", [None, "custom"])
def test_linearized_attention_is_the_same_function_and_restores_exactly(block_type):
    clip = tiny_vit_clip(block_type)
    batch = batch_for(clip, n=4)
    before = {k: v.clone() for k, v in clip.model.state_dict().items()}
    reference = features(clip.model, batch)
    converted = copy.deepcopy(clip.model)
    names = linearize_attention(converted)
    assert len(names) == 4  # two blocks per tower
    if block_type is None:
        assert all(isinstance(converted.get_submodule(n), LinearMultiheadAttention) for n in names)
    torch.testing.assert_close(features(converted, batch), reference, rtol=0, atol=1e-6)
    restore_attention(converted)
    after = converted.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_linearized_attention_pool_runs_its_linear_modules(base_clip):
    model = copy.deepcopy(base_clip.model)
    assert "visual.attnpool" in linearize_attention(model)
    batch = batch_for(base_clip, n=4)
    reference = features(model, batch)
    with torch.no_grad():
        model.visual.attnpool.q_proj.weight.mul_(2.0)  # now the pool's own module computes q
    assert not torch.allclose(features(model, batch), reference)


# ----------------------------------------------------------------------------------------------
# LoRA, DoRA, VeRA


@pytest.mark.parametrize("name", ADAPTERS)
def test_adapters_at_init_leave_the_outputs_unchanged(name, base_clip):
    batch = batch_for(base_clip)
    _, clip = adapted(name, base_clip)
    diff = (features(clip.model, batch) - features(copy.deepcopy(base_clip.model), batch)).abs().max()
    assert diff < 1e-5  # LoRA/VeRA: exactly W (B = 0, b = 0); DoRA: m/‖W‖ = 1 up to rounding


@pytest.mark.parametrize("name", ADAPTERS)
def test_only_adapter_params_train_on_attention_and_mlp_of_both_towers(name, base_clip):
    method, clip = adapted(name, base_clip)
    trainable = [n for n, _ in method.trainable_parameters()]
    marker = "vera_lambda" if name == "vera" else "lora_"
    assert trainable and all(marker in n for n in trainable)
    assert {n for n, p in clip.model.named_parameters() if p.requires_grad} == set(trainable)
    layers = {n for n, _ in tuner_layers(clip.model)}
    assert {"visual.attnpool.q_proj", "visual.attnpool.v_proj", "visual.attnpool.c_proj"} <= layers
    assert {"transformer.resblocks.0.attn.q_proj", "transformer.resblocks.0.attn.out_proj",
            "transformer.resblocks.0.mlp.c_fc", "transformer.resblocks.0.mlp.c_proj"} <= layers  # fmt: skip
    n_base = sum(p.numel() for p in base_clip.model.parameters())
    assert sum(p.numel() for _, p in method.trainable_parameters()) < 0.05 * n_base


def test_targets_and_towers_select_layers(base_clip):
    _, clip = adapted("lora", base_clip, targets="mlp", towers="text")
    layers = {n for n, _ in tuner_layers(clip.model)}
    assert layers == {f"transformer.resblocks.{i}.mlp.{c}" for i in range(3) for c in ("c_fc", "c_proj")}
    with pytest.raises(Exception, match="select no Linear layer"):
        adapted("lora", base_clip, targets="mlp", towers="image")  # ModifiedResNet has no MLP Linears


def test_bad_options_name_the_field():
    with pytest.raises(Exception, match="method.rank"):
        build_method("lora", {"rank": 0}, None)
    with pytest.raises(Exception, match="method.targets"):
        build_method("vera", {"targets": "attn,conv"}, None)


@pytest.mark.parametrize("name", ADAPTERS)
def test_merged_deploy_weights_are_plain_and_equal_the_adapted_model(name, base_clip):
    method, clip = adapted(name, base_clip, rank=8)
    perturb_adapters_(clip.model)
    batch = batch_for(base_clip)
    expected = features(clip.model, batch)
    deployed = method.deploy_weights()
    assert set(deployed) == set(base_clip.model.state_dict())  # exactly the base keys
    plain = copy.deepcopy(base_clip.model)
    plain.load_state_dict(deployed)  # strict: a plain open_clip model takes them
    assert (features(plain, batch) - expected).abs().max() < 1e-5
    assert (features(method.deploy_model(deployed), batch) - expected).abs().max() < 1e-5
    assert any(k.endswith("lora_B.default.weight") or "vera_lambda" in k for k in clip.model.state_dict())


def test_deploy_weights_on_the_vit_attention_blocks():
    clip = tiny_vit_clip()
    method, adapted_clip = adapted("lora", clip, rank=4)
    layers = {n for n, _ in tuner_layers(adapted_clip.model)}
    assert {"visual.transformer.resblocks.0.attn.k_proj", "transformer.resblocks.1.attn.v_proj"} <= layers
    perturb_adapters_(adapted_clip.model)
    batch = batch_for(clip, n=4)
    plain = copy.deepcopy(clip.model)
    plain.load_state_dict(method.deploy_weights())
    assert isinstance(plain.visual.transformer.resblocks[0].attn, nn.MultiheadAttention)
    assert (features(plain, batch) - features(adapted_clip.model, batch)).abs().max() < 1e-5


@pytest.mark.parametrize("name", ADAPTERS)
def test_adapters_are_checkpointed_and_reload_into_a_fresh_build(name, base_clip):
    method, clip = adapted(name, base_clip)
    perturb_adapters_(clip.model)
    weights = load(save({k: v.contiguous() for k, v in clip.model.state_dict().items()}))  # safetensors round trip
    fresh_method, fresh = adapted(name, base_clip)
    fresh_method.load_state_dict(method.state_dict())
    fresh.model.load_state_dict(weights)  # strict: the same adapter keys
    batch = batch_for(base_clip)
    torch.testing.assert_close(features(fresh.model, batch), features(clip.model, batch), rtol=0, atol=0)


@pytest.mark.parametrize("name", ADAPTERS)
def test_adapters_train_and_change_the_deployed_model(name, base_clip):
    method, clip = adapted(name, base_clip)
    named = method.trainable_parameters()
    opt = build_optimizer(named, 1e-2, OptimConfig(weight_decay=0.0))
    clip.model.train()
    for step in range(3):
        method.loss(batch_for(base_clip, seed=step), clip.model).total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    batch = batch_for(base_clip, seed=9)
    deployed = method.deploy_model(method.deploy_weights())
    assert (features(deployed, batch) - features(copy.deepcopy(base_clip.model), batch)).abs().max() > 1e-4
    assert (features(deployed, batch) - features(clip.model, batch)).abs().max() < 1e-5


@pytest.mark.parametrize("name", ADAPTERS)
def test_merge_every_task_keeps_the_function_and_resets_the_adapters(name, base_clip):
    method, clip = adapted(name, base_clip, merge_every_task=True)
    perturb_adapters_(clip.model)
    batch = batch_for(base_clip)
    before = features(clip.model, batch)
    base_before = {n: l.get_base_layer().weight.clone() for n, l in tuner_layers(clip.model)}
    method.end_task(TaskInfo(0, 2, [], steps=1))
    assert (features(clip.model, batch) - before).abs().max() < 1e-5
    for n, layer in tuner_layers(clip.model):
        assert not torch.equal(layer.get_base_layer().weight, base_before[n])
        identity = layer.vera_lambda_b["default"] if name == "vera" else layer.lora_B["default"].weight
        assert torch.count_nonzero(identity) == 0
    # the deployed weights are the merged base weights: fresh adapters add nothing
    plain = copy.deepcopy(base_clip.model)
    plain.load_state_dict(method.deploy_weights())
    assert (features(plain, batch) - before).abs().max() < 1e-5


def test_building_on_an_adapted_model_reuses_its_adapters(base_clip):
    method, clip = adapted("lora", base_clip)
    again = build_method("lora", {}, clip)  # e.g. a method rebuilt on a deep copy of an adapted model
    assert [n for n, _ in again.trainable_parameters()] == [n for n, _ in method.trainable_parameters()]
    with pytest.raises(ValueError, match="already holds"):
        build_method("dora", {}, clip)


# ----------------------------------------------------------------------------------------------
# GaLore


@pytest.mark.parametrize("shape", [(12, 20), (20, 12), (12, 12)])  # square: the left side (docs/methods.md)
def test_galore_update_lies_in_the_projected_subspace(shape):
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(shape))
    opt = GaLoreAdamW([{"params": [w], "rank": 3}], lr=0.1, weight_decay=0.0, update_proj_gap=10, scale=0.5)
    w.grad = torch.randn(shape)
    before = w.detach().clone()
    opt.step()
    delta = w.detach() - before
    p = opt.state[w]["projector"]
    torch.testing.assert_close(p, top_singular_vectors(w.grad, 3))
    assert p.shape == (min(shape), 3) and torch.allclose(p.t() @ p, torch.eye(3), atol=1e-5)
    residual = delta - p @ (p.t() @ delta) if shape[0] <= shape[1] else delta - (delta @ p) @ p.t()
    assert residual.abs().max() < 1e-6 and delta.abs().max() > 1e-3
    moments = opt.state[w]["exp_avg"]
    assert moments.shape == ((3, shape[1]) if shape[0] <= shape[1] else (shape[0], 3))


def test_galore_projected_step_follows_the_paper():
    """Adam on R = PᵀG with a fixed projector, the update scaled by alpha and projected back."""
    torch.manual_seed(1)
    w = nn.Parameter(torch.randn(8, 16))
    opt = GaLoreAdamW([{"params": [w], "rank": 2}], lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1,
                      update_proj_gap=100, scale=0.25)  # fmt: skip
    grads = [torch.randn(8, 16) for _ in range(3)]
    expected, m, v, proj = w.detach().clone(), 0, 0, top_singular_vectors(grads[0], 2)
    for t, g in enumerate(grads, start=1):
        w.grad = g
        opt.step()
        r = proj.t() @ g
        m, v = 0.9 * m + 0.1 * r, 0.99 * v + 0.01 * r * r
        n = (m / (1 - 0.9**t)) / ((v / (1 - 0.99**t)).sqrt() + 1e-8)
        expected = expected * (1 - 0.01 * 0.1) - 0.01 * 0.25 * (proj @ n)
    torch.testing.assert_close(w.detach(), expected, rtol=1e-5, atol=1e-6)


def test_galore_with_full_rank_is_adamw():
    torch.manual_seed(2)
    params = [torch.randn(6, 4), torch.randn(5), torch.randn(4, 6)]
    ours = [nn.Parameter(p.clone()) for p in params]
    theirs = [nn.Parameter(p.clone()) for p in params]
    opt_ours = GaLoreAdamW([{"params": ours, "rank": 4}], lr=0.05, weight_decay=0.2)  # rank = min dim
    opt_theirs = torch.optim.AdamW(theirs, lr=0.05, weight_decay=0.2, foreach=False)
    for _ in range(4):
        grads = [torch.randn(p.shape) for p in params]
        for a, b, g in zip(ours, theirs, grads):
            a.grad, b.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_galore_optimizer_state_round_trips():
    torch.manual_seed(3)
    w0, g = torch.randn(10, 14), [torch.randn(10, 14) for _ in range(4)]

    def run(split: bool) -> torch.Tensor:
        w = nn.Parameter(w0.clone())
        opt = GaLoreAdamW([{"params": [w], "rank": 3}], lr=0.01, update_proj_gap=2)
        for i, grad in enumerate(g):
            if split and i == 2:
                state = opt.state_dict()
                opt = GaLoreAdamW([{"params": [w], "rank": 3}], lr=0.01, update_proj_gap=2)
                opt.load_state_dict(state)
            w.grad = grad
            opt.step()
        return w.detach()

    torch.testing.assert_close(run(True), run(False), rtol=0, atol=0)


def test_galore_method_projects_attention_and_mlp_weights_and_reports_its_state(base_clip):
    method, clip = adapted("galore", base_clip, rank=16)
    assert len(method.trainable_parameters()) == len(list(clip.model.parameters()))  # full-parameter training
    projected = {n for n, p in method.trainable_parameters() if method.projected(n, p)}
    assert "visual.attnpool.q_proj.weight" in projected and "transformer.resblocks.0.mlp.c_fc.weight" in projected
    assert "transformer.resblocks.0.attn.in_proj_weight" in projected
    assert not any(n.startswith(("token_embedding", "visual.conv")) or n.endswith("bias") for n in projected)
    opt = method.build_optimizer(method.trainable_parameters(), 1e-3, OptimConfig())
    method.loss(batch_for(base_clip), clip.model).total.backward()
    opt.step()
    state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                      if isinstance(t, torch.Tensor))  # fmt: skip
    assert state_bytes == method.optimizer_state_bytes()
    assert state_bytes < 2 * sum(p.numel() * p.element_size() for p in clip.model.parameters())
    with pytest.raises(ValueError, match="train.optimizer=adamw"):
        method.build_optimizer(method.trainable_parameters(), 1e-3, OptimConfig(name="sgd"))


# ----------------------------------------------------------------------------------------------
# Budget


def test_mafs_order_lora_below_finetune_and_galore_memory_below_finetune():
    costs = {}
    for name in ("finetune", "lora", "dora", "vera", "galore"):
        clip = meta_clip("fif-mini-rn32")
        method = build_method(name, {}, clip)
        freeze_all_but(clip.model, method.trainable_parameters())
        costs[name] = measure_step_cost(clip, method, 8, "meta")
    ref = costs["finetune"]
    mafs = {name: mafs_per_step(cost, ref) for name, cost in costs.items()}
    assert mafs["lora"] < mafs["finetune"] and mafs["vera"] < mafs["finetune"] and mafs["dora"] < mafs["finetune"]
    assert costs["galore"].memory_parts["optimizer_state"] < ref.memory_parts["optimizer_state"]
    assert mafs["galore"] < mafs["finetune"]


# ----------------------------------------------------------------------------------------------
# Runs: budget, deployment and exact resume through the runner

RUN = [
    "merge.preset=none", "model.pretrained=null", "budget.ft_steps=16", "stream.tasks=2", "train.batch_size=8", "train.log_every=4",
    "checkpoint.every_steps=8", "checkpoint.keep_last=100", "eval.min_samples=10",
    "data.options={pool_size: 200, train_per_class: 6, test_per_class: 3, eval_size: 30, retrieval_train: 30, "
    "retrieval_test: 10}",
    "stream.datasets=[mini_digits,mini_letters]", "eval.datasets=[mini_digits,mini_colors]",
]


@pytest.mark.parametrize("name, options", [
    ("lora", ["method.merge_every_task=true"]),
    pytest.param("dora", [], marks=pytest.mark.slow),
    pytest.param("vera", ["method.merge_every_task=true"], marks=pytest.mark.slow),
    pytest.param("galore", ["method.rank=8", "method.update_proj_gap=5", "checkpoint.every_steps=3"],
                 marks=pytest.mark.slow),
])  # fmt: skip
def test_run_ships_plain_weights_and_resumes_mid_task_exactly(name, options, tmp_path, base_clip):
    import shutil

    import fif
    from fif.runner.checkpoint import CHECKPOINT_DIR, list_checkpoints, remove_after

    events = []
    cfg = fif.load_config("mini", [*RUN, f"method.name={name}", *options])
    result = fif.run(cfg, out_dir=tmp_path / "a", on_event=events.append)
    steps = [e["steps"] for e in events if e["event"] == "task_end"]
    assert name == "galore" or min(steps) > 8  # fine-tuning gets 8 steps per task; adapters are cheaper
    final = load((tmp_path / "a" / "final.safetensors").read_bytes())
    assert set(final) == set(base_clip.model.state_dict()) == set(result.clip.model.state_dict())
    # resume from a checkpoint inside task 1 (after task 0's end_task): same bytes as the uninterrupted run
    shutil.copytree(tmp_path / "a", tmp_path / "b", ignore=shutil.ignore_patterns(".lock"))
    (tmp_path / "b" / "summary.json").unlink()
    mid = [pos for pos, _ in list_checkpoints(tmp_path / "b" / CHECKPOINT_DIR) if pos.task == 1 and pos.started]
    remove_after(tmp_path / "b" / CHECKPOINT_DIR, mid[0])
    from fif.runner.stream import resume

    resume(tmp_path / "b")
    for file in ("final.safetensors", "summary.json"):
        assert (tmp_path / "b" / file).read_bytes() == (tmp_path / "a" / file).read_bytes(), file


def test_hugging_face_text_towers_mlp_is_targeted_and_its_attention_output_is_attention():
    from fif.methods.peft.inject import layer_kind

    block = "text.transformer.encoder.layer.3"
    assert layer_kind(f"{block}.intermediate.dense") == "mlp"
    assert layer_kind(f"{block}.output.dense") == "mlp"
    assert layer_kind(f"{block}.attention.output.dense") == "attn"
    assert layer_kind(f"{block}.attention.self.query") == "attn"
    assert layer_kind("visual.transformer.resblocks.0.mlp.c_fc") == "mlp"
