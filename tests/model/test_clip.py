"""The architecture of a plain open_clip state dict, found from its tensors' shapes."""

from __future__ import annotations

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from fif.model import clip as clip_module
from fif.model.clip import ModelLoadError, build_clip, checkpoint_shapes, fitting_archs, infer_arch


def meta_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = open_clip.create_model(arch, device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_plain_state_dicts_in_every_container_give_their_arch(tmp_path):
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in build_clip("fif-mini-rn32").model.state_dict().items()}
    save_file(state, str(tmp_path / "plain.safetensors"))  # no fif metadata
    torch.save(state, tmp_path / "plain.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "trainer.pt")  # open_clip_train's
    for name in ("plain.safetensors", "plain.pt", "trainer.pt"):
        assert checkpoint_shapes(tmp_path / name) == {k: tuple(v.shape) for k, v in state.items()}
        assert infer_arch(tmp_path / name) == "fif-mini-rn32"


@pytest.mark.parametrize("arch, fits", [
    ("ViT-B-16", ["ViT-B-16", "ViT-B-16-quickgelu"]),  # same shapes, another activation
    ("RN50", ["RN50", "RN50-quickgelu"]),
    ("ViT-B-16-SigLIP", ["ViT-B-16-SigLIP"]),  # a custom text tower, and a timm image tower
])
def test_shapes_pick_the_architectures_they_fit(arch, fits):
    assert fitting_archs(meta_shapes(arch)) == fits


def test_several_fits_ask_for_the_arch_by_name_unless_one_is_preferred(monkeypatch, tmp_path):
    monkeypatch.setattr(clip_module, "checkpoint_shapes", lambda path: meta_shapes("ViT-B-16"))
    with pytest.raises(ModelLoadError, match=r"fit 2 architectures: ViT-B-16, ViT-B-16-quickgelu; .*--arch NAME"):
        infer_arch("vit.safetensors")
    assert infer_arch("vit.safetensors", prefer="ViT-B-16-quickgelu") == "ViT-B-16-quickgelu"
    with pytest.raises(ModelLoadError, match="fit 2 architectures"):
        infer_arch("vit.safetensors", prefer="fif-mini-rn32")  # a preference outside the fits is no answer
    monkeypatch.setattr(clip_module, "checkpoint_shapes", lambda path: {"text_projection": (3, 3)})
    with pytest.raises(ModelLoadError, match="fit none of open_clip's built-in architectures .*--arch NAME"):
        infer_arch("other.safetensors")


def test_unreadable_files_are_named(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="junk.safetensors: cannot read its tensors"):
        checkpoint_shapes(tmp_path / "junk.safetensors")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ModelLoadError, match="list.pt: not a state dict"):
        checkpoint_shapes(tmp_path / "list.pt")
