"""Residual-block depth of open_clip keys and LiNeS scales."""

from __future__ import annotations

import pytest
import torch

from fif.merge import LinesOptions, MergeError, apply_lines, block_depths, lines_scale, lines_scales


def open_clip_keys(arch: str) -> list[str]:
    import open_clip

    from fif.model.clip import register_fif_models

    register_fif_models()
    return list(open_clip.create_model(arch, device="meta").state_dict())


def test_vit_towers_count_their_blocks_separately():
    depths = block_depths(open_clip_keys("ViT-B-32"))
    assert depths["visual.transformer.resblocks.0.ln_1.weight"] == (0, 12)
    assert depths["visual.transformer.resblocks.11.mlp.c_proj.bias"] == (11, 12)
    assert depths["transformer.resblocks.5.attn.in_proj_weight"] == (5, 12)
    for key in ("visual.conv1.weight", "visual.proj", "token_embedding.weight", "ln_final.weight", "logit_scale"):
        assert depths[key] is None


def test_modified_resnet_counts_bottlenecks_across_stages():
    depths = block_depths(open_clip_keys("RN50"))  # layers [3, 4, 6, 3]: 16 bottlenecks
    assert depths["visual.layer1.0.conv1.weight"] == (0, 16)
    assert depths["visual.layer2.0.conv1.weight"] == (3, 16)
    assert depths["visual.layer3.5.bn3.num_batches_tracked"] == (12, 16)
    assert depths["visual.layer4.2.conv3.weight"] == (15, 16)
    assert depths["visual.attnpool.q_proj.weight"] == (15, 16)  # on top of the last bottleneck
    assert depths["visual.attnpool.positional_embedding"] == (15, 16)
    assert depths["visual.conv1.weight"] is None


def test_mini_model_depths():
    depths = block_depths(open_clip_keys("fif-mini-rn32"))
    assert {depths[f"visual.layer{s}.0.conv1.weight"] for s in (1, 2, 3, 4)} == {(0, 4), (1, 4), (2, 4), (3, 4)}
    assert depths["transformer.resblocks.2.ln_1.weight"] == (2, 3)


def test_other_towers():
    depths = block_depths(
        ["text.transformer.encoder.layer.3.attention.self.query.weight", "text.transformer.encoder.layer.0.x",
         "visual.trunk.blocks.1.attn.qkv.weight", "visual.trunk.blocks.0.norm1.weight",
         "visual.trunk.stages.1.blocks.0.conv_dw.weight", "visual.trunk.stages.0.blocks.2.conv_dw.weight"]
    )
    assert depths["text.transformer.encoder.layer.3.attention.self.query.weight"] == (1, 2)
    assert depths["visual.trunk.blocks.1.attn.qkv.weight"] == (1, 2)
    assert depths["visual.trunk.stages.1.blocks.0.conv_dw.weight"] == (1, 2)


def test_lines_scale():
    assert lines_scale(None, 0.3, 0.5) == 0.3
    assert lines_scale((0, 5), 0.3, 0.5) == pytest.approx(0.3)
    assert lines_scale((2, 5), 0.3, 0.5) == pytest.approx(0.55)
    assert lines_scale((4, 5), 0.3, 0.5) == pytest.approx(0.8)
    assert lines_scale((0, 1), 0.3, 0.5) == pytest.approx(0.8)
    scales = lines_scales(["transformer.resblocks.0.w", "transformer.resblocks.1.w", "logit_scale"], 0.0, 1.0)
    assert scales == {"transformer.resblocks.0.w": 0.0, "transformer.resblocks.1.w": 1.0, "logit_scale": 0.0}


def test_lines_depth_schedules():
    # α + β·(l/(L − 1))^p at l/(L − 1) = 1/4: linear ¼, quadratic 1/16, sqrt ½
    assert lines_scale((1, 5), 0.2, 0.8) == pytest.approx(0.4)
    assert lines_scale((1, 5), 0.2, 0.8, "linear") == pytest.approx(0.4)
    assert lines_scale((1, 5), 0.2, 0.8, "quadratic") == pytest.approx(0.25)
    assert lines_scale((1, 5), 0.2, 0.8, "sqrt") == pytest.approx(0.6)
    assert lines_scale((4, 5), 0.2, 0.8, "quadratic") == pytest.approx(1.0)
    assert lines_scale(None, 0.2, 0.8, "sqrt") == 0.2
    with pytest.raises(MergeError, match="Valid: linear, quadratic, sqrt"):
        lines_scale((1, 5), 0.2, 0.8, "cubic")
    with pytest.raises(MergeError, match="schedule"):
        LinesOptions(0.5, 0.5, "cubic")


def test_apply_lines_uses_the_schedule():
    base = {"transformer.resblocks.0.w": torch.zeros(2), "transformer.resblocks.1.w": torch.zeros(2),
            "transformer.resblocks.2.w": torch.zeros(2), "proj": torch.zeros(2)}
    tuned = {k: torch.ones(2) for k in base}
    out = apply_lines(tuned, base, alpha=0.0, beta=1.0, schedule="quadratic")
    assert [out[f"transformer.resblocks.{i}.w"][0].item() for i in range(3)] == pytest.approx([0.0, 0.25, 1.0])
    out = apply_lines(tuned, base, alpha=0.0, beta=1.0, schedule="sqrt")
    assert out["transformer.resblocks.1.w"][0].item() == pytest.approx(0.5**0.5)
    assert out["proj"][0].item() == 0.0
