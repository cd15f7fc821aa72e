"""Measuring a step: FLOPs against hand counts, CPU vs meta, attention kernels, memory estimate, fallback."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fif.budget import (
    GIB,
    BudgetError,
    hook_cost_mafs,
    flop_counting,
    mafs_per_step,
    measure_step_cost,
    memory_multiplier,
    meta_clip,
    run_budget_mafs,
    steps_for_task,
    task_budgets,
    trace_step,
)
from fif.budget.measure import Layout, _training_only, run_real_steps
from fif.core.flops import count_flops, meta_copy
from fif.data.batch import synthetic_batch
from fif.methods import BaseMethod, HookCost, TaskInfo, UpdateMethod, build_method
from fif.methods.base import NoOptions
from fif.model.clip import Clip, build_clip

# ----------------------------------------------------------------------------------------------
# A CLIP-shaped model small enough to count by hand

S, W, D, V, CTX = 4, 6, 5, 11, 3  # image side, text width, embed dim, vocab, context length


class TinyClipModel(nn.Module):
    """image: flatten → Linear(3·S², D); text: Embedding(V, W) → mean over tokens → Linear(W, D)."""

    def __init__(self):
        super().__init__()
        self.visual = nn.Linear(3 * S * S, D)
        self.token_embedding = nn.Embedding(V, W)
        self.text_projection = nn.Linear(W, D)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, images, tokens):
        text = self.text_projection(self.token_embedding(tokens).mean(dim=1))
        image = self.visual(images.flatten(1))
        return {"image_features": image, "text_features": text, "logit_scale": self.logit_scale.exp()}


def tiny_clip() -> Clip:
    tokenizer = lambda texts: torch.zeros(len(texts), CTX, dtype=torch.long)  # noqa: E731
    return Clip(TinyClipModel(), tokenizer, "tiny", S, (0.5,) * 3, (0.5,) * 3)


def hand_count(method: str, b: int) -> tuple[int, int]:
    """(forward, forward + backward) FLOPs: a (m×k)·(k×n) matmul costs 2·m·n·k, each grad matmul as much."""
    image, text, logits = 2 * b * 3 * S * S * D, 2 * b * W * D, 2 * b * b * D  # I·Tᵀ for the logits
    forward = image + text + logits
    backward = {
        # images need no grad: only the visual weight grad; text: weight grad + input grad (embedding trains);
        # logits: grads to both feature matrices
        "finetune": image + 2 * text + 2 * logits,
        # frozen image tower: nothing flows into it, but the temperature trains, so both logits grads run
        # (logits = (exp(s)·I)·Tᵀ and exp(s)·I needs a grad for s)
        "locked_image": 2 * text + 2 * logits,
        # biases only: grads reach both projections' outputs (2 logits matmuls), no weight or input grads
        "bitfit": 2 * logits,
    }[method]
    return forward, forward + backward


@pytest.mark.parametrize("method", ["finetune", "locked_image", "bitfit"])
@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_flops_equal_the_hand_count(method, batch_size):
    clip = tiny_clip()
    cost = measure_step_cost(clip, build_method(method, {}, clip), batch_size)
    assert (cost.forward_flops, cost.flops) == hand_count(method, batch_size)


def test_full_finetuning_is_three_forwards_when_every_matmul_needs_both_grads():
    """2 backward matmuls per forward matmul: 3× forward, less the input grads nobody needs (the images')."""
    forward, step = hand_count("finetune", 16)
    image = 2 * 16 * 3 * S * S * D
    assert step == 3 * forward - image


def test_measuring_leaves_the_model_alone():
    clip = tiny_clip()
    clip.model.eval()
    clip.model.visual.weight.requires_grad_(False)
    flags = [p.requires_grad for p in clip.model.parameters()]
    before = {k: v.clone() for k, v in clip.model.state_dict().items()}
    measure_step_cost(clip, build_method("bitfit", {}, clip), 4)
    measure_step_cost(clip, AnchoredFinetune(clip), 4)  # the fallback traces the real model
    assert not clip.model.training
    assert [p.requires_grad for p in clip.model.parameters()] == flags
    assert all(p.grad is None for p in clip.model.parameters())
    assert all(torch.equal(before[k], v) for k, v in clip.model.state_dict().items())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    clip = tiny_clip()
    with pytest.raises(BudgetError, match="CUDA is not available"):
        measure_step_cost(clip, build_method("finetune", {}, clip), 4, "cuda")


def test_memory_estimate_terms():
    clip = tiny_clip()
    n_params = sum(p.numel() for p in clip.model.parameters())
    for name, trainable in [("finetune", n_params), ("locked_image", n_params - 3 * S * S * D - D), ("bitfit", 2 * D)]:
        cost = measure_step_cost(clip, build_method(name, {}, clip), 8)
        parts = cost.memory_parts
        assert cost.memory_source == "estimate"
        assert parts["parameters"] == 4 * n_params
        assert parts["gradients"] == 4 * trainable and parts["optimizer_state"] == 8 * trainable
        assert parts["batch"] == 8 * (3 * S * S * 4 + CTX * 8 + 1)
        assert cost.peak_memory_bytes == sum(parts.values())


# ----------------------------------------------------------------------------------------------
# Attention kernels


def test_attention_counts_as_its_math_on_cpu_and_meta():
    b, h, s, d = 2, 3, 5, 4
    forward = 2 * 2 * b * h * s * s * d  # QKᵀ and PV

    def step(device):
        q = torch.randn(b, h, s, d, device=device, requires_grad=True)
        return count_flops(lambda: F.scaled_dot_product_attention(q, q, q).sum().backward())

    def forward_only(device):
        q = torch.randn(b, h, s, d, device=device)
        return count_flops(lambda: F.scaled_dot_product_attention(q, q, q, attn_mask=torch.zeros(s, s, device=device)))

    assert forward_only("cpu") == forward_only("meta") == forward
    assert step("cpu") == step("meta") == 3 * forward  # backward = 2 × forward, whatever the kernel


def test_paper_accounting_charges_the_fused_backward_its_qk_recomputation():
    """torch's count of a fused attention backward (as on CUDA, where FiF's Tab. 4 was counted) includes
    recomputing S = QKᵀ: backward = 2.5 × forward instead of 2 × (closes full fine-tuning's −0.64%)."""
    b, h, s, d = 2, 3, 5, 4
    forward = 2 * 2 * b * h * s * s * d
    q = torch.randn(b, h, s, d, device="meta", requires_grad=True)
    with flop_counting(recompute_attention=True) as counter:
        F.scaled_dot_product_attention(q, q, q).sum().backward()
    assert counter.get_total_flops() == forward + 2 * forward + forward // 2


def test_method_state_counts_in_the_memory_estimate():
    clip = tiny_clip()
    n_params = sum(p.numel() for p in clip.model.parameters())
    ft = measure_step_cost(clip, build_method("finetune", {}, clip), 8)
    ewc = measure_step_cost(clip, build_method("ewc", {}, clip), 8)
    si = measure_step_cost(clip, build_method("si", {}, clip), 8)
    lwf = measure_step_cost(clip, build_method("lwf", {}, clip), 8)
    assert ft.memory_parts["method_state"] == 0
    assert ewc.memory_parts["method_state"] == 2 * 4 * n_params  # Fisher + anchor
    assert si.memory_parts["method_state"] == 4 * 4 * n_params  # Ω, θ*, ω, θ before the step
    assert lwf.memory_parts["method_state"] >= 4 * n_params  # the teacher
    assert memory_multiplier(ewc, ft) == pytest.approx(1 + 8 * n_params / ft.peak_memory_bytes)


def test_multihead_attention_fast_path_is_counted():
    """In eval/no_grad nn.MultiheadAttention takes a fused fast path FlopCounterMode cannot see; fif turns it off."""
    n, L, E, h = 2, 5, 8, 2
    mha = nn.MultiheadAttention(E, h, batch_first=True).eval()
    x = torch.randn(n, L, E)
    with torch.no_grad():
        flops = count_flops(lambda: mha(x, x, x, need_weights=False))
    assert flops == 2 * n * L * E * 3 * E + 4 * n * L * L * E + 2 * n * L * E * E  # in-proj, attention, out-proj
    assert torch.backends.mha.get_fastpath_enabled()  # restored


def _trace(clip: Clip, method: UpdateMethod, batch_size: int, on_meta: bool):
    ids = {id(p) for _, p in method.trainable_parameters()}
    if on_meta:
        model, params = meta_copy(clip.model)
        ids, device = {id(params[i]) for i in ids}, "meta"
    else:
        model, device = clip.model, "cpu"
    with _training_only(model, ids):
        return trace_step(model, method, synthetic_batch(clip, batch_size, device))


TINY_VIT = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def tiny_vit_arch(tmp_path_factory) -> str:
    """A ViT CLIP with open_clip's default blocks (nn.MultiheadAttention), registered under a test name."""
    import open_clip

    path = tmp_path_factory.mktemp("cfg") / "fif-test-tiny-vit.json"
    path.write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(path)
    return "fif-test-tiny-vit"


@pytest.mark.parametrize(
    "arch, method",
    [
        ("fif-mini-rn32", "finetune"),
        ("fif-mini-rn32", "bitfit"),
        ("tiny-vit", "finetune"),
        ("tiny-vit", "locked_image"),
    ],
)
def test_cpu_and_meta_counts_agree(arch, method, tiny_vit_arch):
    """Same FLOPs and the same saved activations on CPU (fused flash kernel) and meta (routed to it)."""
    clip = build_clip(tiny_vit_arch if arch == "tiny-vit" else arch)
    m = build_method(method, {}, clip)
    cpu, meta = _trace(clip, m, 2, on_meta=False), _trace(clip, m, 2, on_meta=True)
    # A frozen BatchNorm runs in eval mode; there the meta kernel saves its (C,) mean and inverse std for
    # the backward where the CPU kernel saves empty tensors: 2·C fp32 per layer, independent of the batch.
    trainable = {id(p) for _, p in m.trainable_parameters()}
    frozen_bn = [mod for mod in clip.model.modules()
                 if isinstance(mod, nn.modules.batchnorm._BatchNorm) and id(mod.weight) not in trainable]  # fmt: skip
    assert (cpu.flops, cpu.forward_flops) == (meta.flops, meta.forward_flops)
    assert meta.activation_bytes - cpu.activation_bytes == sum(8 * mod.num_features for mod in frozen_bn)
    assert cpu.flops > cpu.forward_flops > 0 and cpu.activation_bytes > 0


class AnchoredFinetune(BaseMethod):
    """Fine-tuning plus a penalty against real (CPU) anchor weights: its loss cannot run on meta."""

    def __init__(self, clip: Clip):
        super().__init__(clip, NoOptions())
        self.anchor = clip.model.text_projection.weight.detach().clone()

    def loss(self, batch, model):
        out = super().loss(batch, model)
        out.total = out.total + ((model.text_projection.weight - self.anchor) ** 2).sum()
        return out


def test_methods_that_cannot_run_on_meta_are_extrapolated_exactly():
    clip = tiny_clip()
    plain = measure_step_cost(clip, build_method("finetune", {}, clip), 37)
    anchored = measure_step_cost(clip, AnchoredFinetune(clip), 37)  # traced at B = 2..5 on CPU
    assert (anchored.forward_flops, anchored.flops) == (plain.forward_flops, plain.flops) == hand_count("finetune", 37)
    assert anchored.memory_parts["activations"] >= plain.memory_parts["activations"]


def test_meta_clip_counts_like_the_real_model():
    real, meta = build_clip("fif-mini-rn32"), meta_clip("fif-mini-rn32")
    assert meta.device.type == "meta"
    for name in ["finetune", "lnfit"]:
        on_meta = measure_step_cost(meta, build_method(name, {}, meta), 16)
        assert measure_step_cost(real, build_method(name, {}, real), 16) == on_meta


# ----------------------------------------------------------------------------------------------
# Methods against each other


class CostlyHook(BaseMethod):
    """Fine-tuning with a task hook as expensive as 100 training steps (e.g. a Fisher pass)."""

    def __init__(self, clip: Clip, reference_flops: float):
        super().__init__(clip, NoOptions())
        self.hook_flops = 100 * reference_flops

    def extra_cost(self, task: TaskInfo) -> HookCost:
        return HookCost(flops=self.hook_flops)


def test_a_costly_hook_gives_fewer_steps():
    clip = tiny_clip()
    reference = measure_step_cost(clip, build_method("finetune", {}, clip), 8)
    costly = CostlyHook(clip, reference.flops)
    cost = measure_step_cost(clip, costly, 8)
    budget = task_budgets(run_budget_mafs(28_400, None, reference), 20)[0]
    hook = hook_cost_mafs(costly.extra_cost(TaskInfo(0, 20, [], 0)), reference)
    assert steps_for_task(budget, mafs_per_step(cost, reference)) == 1420
    assert steps_for_task(budget, mafs_per_step(cost, reference), hook) == 1320


def test_paper_setup_ordering_and_three_forwards():
    """ViT-B/16 at batch 512 (FiF's setup), on meta: locked image < BitFit ≈ LNFit < full fine-tuning in MAFs."""
    clip = meta_clip("ViT-B-16")  # these methods do not change the model, so they can share it
    names = ["finetune", "locked_image", "bitfit", "lnfit"]
    costs = {name: measure_step_cost(clip, build_method(name, {}, clip), 512) for name in names}
    ref = costs["finetune"]
    mafs = {name: mafs_per_step(cost, ref) for name, cost in costs.items()}
    assert mafs["locked_image"] < min(mafs["bitfit"], mafs["lnfit"])
    assert max(mafs["bitfit"], mafs["lnfit"]) < mafs["finetune"]
    assert 2.95 < ref.flops / ref.forward_flops <= 3.0  # 3× forward, less the image input grad of the patch embedding
    assert 38e9 < ref.forward_flops / 512 < 44e9  # image ViT-B/16 ≈ 35 GFLOPs (2 × 17.6 GMACs) + text ≈ 6
    assert 20 * GIB < ref.peak_memory_bytes < 200 * GIB


def test_paper_accounting_counts_adapters_as_the_reference_merged_them():
    """FiF Tab. 4's LoRA r=4 / r=64 (54,479.25 / 54,505.02 GFLOPs/step): the reference merged W + s·B·A on each
    block's in_proj and c_proj of both towers, so their dense weight gradients were counted. fif's unmerged
    adapters on q, k, v, out, c_fc, c_proj (exact accounting) cost far less."""
    paper = {}
    for rank in (4, 64):
        clip = meta_clip("ViT-B-16")
        paper[rank] = measure_step_cost(clip, build_method("lora", {"rank": rank}, clip), 512, accounting="paper")
    assert paper[4].flops / 1e9 == pytest.approx(54_479.25, abs=0.01)
    assert paper[64].flops / 1e9 == pytest.approx(54_505.02, abs=0.01)
    clip = meta_clip("ViT-B-16")
    lora = build_method("lora", {"towers": ["image"], "targets": ["mlp"]}, clip)
    exact = measure_step_cost(clip, lora, 512)
    image_mlp = measure_step_cost(clip, lora, 512, accounting="paper")  # only the image towers' c_proj merged
    assert exact.flops < image_mlp.flops < paper[4].flops
    assert image_mlp.forward_flops == pytest.approx(paper[4].forward_flops, rel=1e-4)  # B·A is all a merge adds


# ----------------------------------------------------------------------------------------------
# The real steps behind the CUDA peak (run here on CPU; the CUDA reading itself needs a GPU)


@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16])
def test_real_steps_run_on_a_copy_and_leave_the_model_alone(amp_dtype):
    clip = tiny_clip()
    method = build_method("bitfit", {}, clip)
    before = {k: v.clone() for k, v in clip.model.state_dict().items()}
    ids = {id(p) for _, p in method.trainable_parameters()}
    run_real_steps(clip, method, 4, "cpu", ids, amp_dtype)
    assert all(torch.equal(before[k], v) for k, v in clip.model.state_dict().items())
    assert all(p.grad is None for p in clip.model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_peak_memory_orders_methods():
    clip = build_clip("fif-mini-rn32")
    costs = {n: measure_step_cost(clip, build_method(n, {}, clip), 256, "cuda") for n in ["finetune", "lnfit"]}
    assert {c.memory_source for c in costs.values()} == {"cuda_max_allocated"}
    assert 0 < costs["lnfit"].peak_memory_bytes < costs["finetune"].peak_memory_bytes
    on_cpu = measure_step_cost(clip, build_method("lnfit", {}, clip), 256)
    assert costs["lnfit"].flops == on_cpu.flops  # the FLOP count does not depend on the device


def test_only_activations_the_graph_still_holds_count():
    """A graph branch the loss drops frees its saved tensors mid-trace (they are not in memory at the peak),
    and a later saved tensor may get the same storage address: what counts is each storage the graph still
    holds when the forward ends (before, freed addresses reused made DoRA's estimate vary run to run)."""

    class DroppedBranch:
        name = "dropped_branch"

        def loss(self, batch, model):
            x = batch.images.flatten(1)
            for _ in range(3):  # built and dropped: h*h saves h (4×5 floats), freed with the branch
                h = model(x)
                branch = (h * h).sum()
                del h, branch
            y = model(x)
            return SimpleNamespace(total=(y * y).sum())

    model = nn.Linear(12, 5, bias=False)
    batch = SimpleNamespace(images=torch.randn(4, 3, 2, 2), tokens=torch.zeros(4, 3, dtype=torch.long),
                            source=torch.zeros(4, dtype=torch.long))
    # only y*y's saved y (4×5 float32) is held at the end (x and the weight are the batch's and the model's)
    assert trace_step(model, DroppedBranch(), batch).activation_bytes == 4 * 5 * 4


# ----------------------------------------------------------------------------------------------
# Per-device peak under the run's layout (ranks, micro-batches, checkpointing, sharding)


@pytest.mark.parametrize("layout", [Layout(2), Layout(4), Layout(1, 4), Layout(2, shard="fsdp"), Layout(2, 1, True)])
def test_the_multiplier_is_the_single_device_figure_whatever_the_layout(layout, tiny_vit_arch):
    """FLOPs, the peak the multiplier divides and so the MAFs are those of one device at the global batch."""
    clip = meta_clip(tiny_vit_arch)
    ft, lnfit = build_method("finetune", {}, clip), build_method("lnfit", {}, clip)
    alone = [measure_step_cost(clip, m, 16, "meta") for m in (ft, lnfit)]
    laid = [measure_step_cost(clip, m, 16, "meta", layout=layout) for m in (ft, lnfit)]
    for a, b in zip(alone, laid):
        assert (b.flops, b.peak_memory_bytes, b.batch_size) == (a.flops, a.peak_memory_bytes, 16)
    assert mafs_per_step(laid[1], laid[0]) == mafs_per_step(alone[1], alone[0])


@pytest.mark.parametrize("method", ["finetune", "lnfit"])
@pytest.mark.parametrize("layout", [Layout(2), Layout(4), Layout(1, 4)])
def test_the_device_peak_is_taken_at_the_per_rank_micro_batch(method, layout, tiny_vit_arch):
    """W ranks × A micro-batches: each device holds B/(W·A) samples' activations and batch, the whole
    replicated model state; the same figure as one device at that batch (not the global batch's)."""
    clip = meta_clip(tiny_vit_arch)
    m = build_method(method, {}, clip)
    cost = measure_step_cost(clip, m, 16, "meta", layout=layout)
    micro = 16 // (layout.world_size * layout.grad_accum_steps)
    at_micro = measure_step_cost(clip, m, micro, "meta")
    assert cost.device_batch_size == micro and cost.device_memory_source == "estimate"
    assert cost.device_peak_bytes == at_micro.peak_memory_bytes < cost.peak_memory_bytes
    assert cost.device_memory_parts == at_micro.memory_parts


def test_fsdp_shards_gradients_and_optimizer_state(tiny_vit_arch):
    clip = meta_clip(tiny_vit_arch)
    ft = build_method("finetune", {}, clip)
    ddp = measure_step_cost(clip, ft, 16, "meta", layout=Layout(4)).device_memory_parts
    fsdp = measure_step_cost(clip, ft, 16, "meta", layout=Layout(4, shard="fsdp")).device_memory_parts
    for key in ("gradients", "optimizer_state"):
        assert fsdp[key] == pytest.approx(ddp[key] / 4)
    assert fsdp["parameters"] == pytest.approx(ddp["parameters"] * 1.25)  # the run's whole model + its shard
    for key in ("activations", "batch", "method_state"):
        assert fsdp[key] == ddp[key]


def test_checkpointing_keeps_fewer_activations_and_leaves_the_model_alone(tiny_vit_arch):
    clip = meta_clip(tiny_vit_arch)
    ft = build_method("finetune", {}, clip)
    plain = measure_step_cost(clip, ft, 16, "meta", layout=Layout(2))
    checkpointed = measure_step_cost(clip, ft, 16, "meta", layout=Layout(2, 1, True))
    assert checkpointed.device_memory_parts["activations"] < plain.device_memory_parts["activations"] / 2
    assert checkpointed.layout == "2 ranks, 1 micro-batch, checkpointed"
    assert not any(getattr(m, "grad_checkpointing", False) for m in clip.model.modules())


def test_a_bad_layout_is_a_clear_error():
    with pytest.raises(BudgetError, match="shard='zero3'.*fsdp"):
        Layout(2, shard="zero3")
    with pytest.raises(BudgetError, match="world_size"):
        Layout(0)
