"""Parameter-selective tuning: BitFit (biases only) and LNFit (normalisation layers only)."""

from __future__ import annotations

from torch import nn

from fif.methods.base import BaseMethod
from fif.methods.registry import register_method

# LayerNorm for transformers; BatchNorm/GroupNorm too, so LNFit means "norm layers" on conv towers.
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


@register_method("bitfit")
class BitFit(BaseMethod):
    """Train only bias terms (Ben Zaken et al. 2022)."""

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.clip.model.named_parameters() if n.endswith(".bias") or n == "bias"]


@register_method("lnfit")
class LNFit(BaseMethod):
    """Train only the affine parameters of normalisation layers (De Min et al. 2023)."""

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        out = []
        for mod_name, module in self.clip.model.named_modules():
            if isinstance(module, NORM_TYPES):
                for p_name, p in module.named_parameters(recurse=False):
                    out.append((f"{mod_name}.{p_name}", p))
        return out
