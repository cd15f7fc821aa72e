"""BitFit, LNFit and the locked towers on real open_clip towers (a ViT with fused attention, a ResNet with
BatchNorm), not only a stand-in: which parameters train, and that frozen BatchNorm statistics stay frozen."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from fif.budget import meta_clip
from fif.data.batch import synthetic_batch
from fif.methods import build_method, freeze_all_but
from fif.model.clip import build_clip

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_VIT = {  # a real open_clip ViT (fused nn.MultiheadAttention, LayerNorms), small enough for CPU
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module", autouse=True)
def tiny_vit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("archs")
    (folder / "fif-test-selective-vit.json").write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(folder)


def _trainable(name: str, clip) -> dict[str, torch.nn.Parameter]:
    return dict(build_method(name, {}, clip).trainable_parameters())


def test_bitfit_trains_every_bias_of_vit_b_16_including_fused_attention_biases():
    clip = meta_clip("ViT-B-16")
    trainable = _trainable("bitfit", clip)
    assert "transformer.resblocks.0.attn.in_proj_bias" in trainable
    assert "visual.transformer.resblocks.11.attn.in_proj_bias" in trainable
    assert sum(p.numel() for p in trainable.values()) == 171_008  # 124,928 without in_proj_bias
    assert all("bias" in n.rsplit(".", 1)[-1] for n in trainable)


@pytest.mark.parametrize("arch", ["fif-test-selective-vit", "fif-mini-rn32"])
def test_selective_methods_pick_the_named_parameters_of_real_towers(arch):
    clip = build_clip(arch)
    params = dict(clip.model.named_parameters())
    bitfit, lnfit = _trainable("bitfit", clip), _trainable("lnfit", clip)
    assert set(bitfit) == {n for n in params if n.endswith("bias")}
    norms = {n for n, m in clip.model.named_modules()
             if isinstance(m, (torch.nn.LayerNorm, torch.nn.modules.batchnorm._BatchNorm))}  # fmt: skip
    assert norms and set(lnfit) == {f"{m}.{p}" for m in norms for p in ("weight", "bias") if f"{m}.{p}" in params}
    locked_image, locked_text = _trainable("locked_image", clip), _trainable("locked_text", clip)
    assert not any(n.startswith("visual.") for n in locked_image) and "logit_scale" in locked_image
    assert set(locked_text) == {n for n in params if n.startswith("visual.")} | {"logit_scale"}


def _running_stats(model) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers() if "running" in n}


@pytest.mark.parametrize("method, moves", [("locked_image", False), ("bitfit", False), ("lora", False),
                                           ("lnfit", True), ("finetune", True)])  # fmt: skip
def test_frozen_batchnorm_statistics_stay_frozen_in_train_mode(method, moves):
    if method == "lora":
        pytest.importorskip("peft")
    torch.manual_seed(0)
    clip = build_clip("fif-mini-rn32")
    m = build_method(method, {}, clip)
    freeze_all_but(clip.model, m.trainable_parameters())
    before = _running_stats(clip.model)
    assert before
    clip.model.train()
    m.loss(synthetic_batch(clip, 4, "cpu"), clip.model).total.backward()
    clip.model.eval()
    clip.model.train()  # a pass that restores train(was_training) mid-task must not undo it
    m.loss(synthetic_batch(clip, 4, "cpu"), clip.model)
    after = _running_stats(clip.model)
    changed = any(not torch.equal(before[n], after[n]) for n in before if "visual" in n)
    assert changed == moves
