"""model.attention: default|custom — open_clip's CustomResidualAttentionBlock with the default block's keys."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from fif.model.clip import ModelLoadError, attention_overrides, build_clip

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def test_overrides_per_tower():
    assert attention_overrides("ViT-B-16", "default") == {}
    vit = attention_overrides("ViT-B-16", "custom")
    assert vit["vision_cfg"]["block_type"] == "custom" and vit["text_cfg"]["block_type"] == "custom"
    assert vit["vision_cfg"]["width"] == 768  # the rest of the tower config is kept
    assert set(attention_overrides("RN50", "custom")) == {"text_cfg"}  # a ResNet image tower has no blocks
    with pytest.raises(ModelLoadError, match="model.attention='flash'"):
        attention_overrides("ViT-B-16", "flash")
    with pytest.raises(ModelLoadError, match="built-in"):
        attention_overrides("hf-hub:org/model", "custom")


def test_vit_b16_custom_blocks_keep_the_pretrained_keys():
    with torch.device("meta"):
        default = build_clip("ViT-B-16", device="meta").model.state_dict()
        custom_clip = build_clip("ViT-B-16", device="meta", attention="custom")
    custom = custom_clip.model.state_dict()
    assert type(custom_clip.model.visual.transformer.resblocks[0]).__name__ == "CustomResidualAttentionBlock"
    assert list(custom) == list(default) and all(custom[k].shape == default[k].shape for k in default)


def test_custom_blocks_compute_the_default_blocks_function(tmp_path):
    (tmp_path / "fif-test-tiny-vit.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(tmp_path)
    torch.manual_seed(0)
    default = build_clip("fif-test-tiny-vit").model.eval()
    custom = build_clip("fif-test-tiny-vit", attention="custom").model.eval()
    custom.load_state_dict(default.state_dict())  # strict: pretrained weights load unchanged
    images, tokens = torch.randn(2, 3, 32, 32), torch.randint(0, 49408, (2, 16))
    with torch.no_grad():
        a, b = default(images, tokens), custom(images, tokens)
    for key in ("image_features", "text_features"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)


def test_config_option_is_validated():
    import fif
    from fif.core.typed import ConfigError

    assert fif.load_config("mini", ["model.attention=custom"]).model.attention == "custom"
    with pytest.raises(ConfigError, match="model.attention"):
        fif.load_config("mini", ["model.attention=flash"])
