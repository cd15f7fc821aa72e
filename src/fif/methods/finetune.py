"""Full fine-tuning and its tower-locked variants (FiF §4: finetune, locked text, locked image)."""

from __future__ import annotations

from torch import nn

from fif.methods.base import BaseMethod
from fif.methods.registry import register_method


def is_image_tower(name: str) -> bool:
    """True for parameters of open_clip's image tower (``visual.*``)."""
    return name.startswith("visual.")


def is_temperature(name: str) -> bool:
    return name in ("logit_scale", "logit_bias")


@register_method("finetune")
class Finetune(BaseMethod):
    """Update every parameter with the CLIP loss on the mixed batch."""

    shardable = True


@register_method("locked_text")
class LockedText(BaseMethod):
    """Freeze the text tower; train the image tower and the temperature (LiT's opposite)."""

    shardable = True

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.clip.model.named_parameters() if is_image_tower(n) or is_temperature(n)]


@register_method("locked_image")
class LockedImage(BaseMethod):
    """Freeze the image tower; train the text tower and the temperature (LiT, Zhai et al. 2022)."""

    shardable = True

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.clip.model.named_parameters() if not is_image_tower(n)]
