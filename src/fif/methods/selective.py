"""Parameter-selective tuning: BitFit (biases only) and LNFit (normalisation layers only)."""

from __future__ import annotations

from torch import nn

from fif.methods.base import BaseMethod
from fif.methods.registry import register_method

# LayerNorm for transformers; BatchNorm/GroupNorm too, so LNFit means "norm layers" on conv towers.
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def is_bias(name: str) -> bool:
    """True for a bias parameter: its last name component is ``bias`` or ends in ``_bias`` (``in_proj_bias``)."""
    last = name.rsplit(".", 1)[-1]
    return last == "bias" or last.endswith("_bias")


@register_method("bitfit")
class BitFit(BaseMethod):
    """Train only bias terms (Ben Zaken et al. 2022): every ``*.bias`` and every fused bias such as
    ``nn.MultiheadAttention``'s ``in_proj_bias`` (the q, k and v biases in one tensor)."""

    shardable = True

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.clip.model.named_parameters() if is_bias(n)]


@register_method("lnfit")
class LNFit(BaseMethod):
    """Train only the affine parameters of normalisation layers (De Min et al. 2023)."""

    shardable = True

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        out = []
        for mod_name, module in self.clip.model.named_modules():
            if isinstance(module, NORM_TYPES):
                for p_name, p in module.named_parameters(recurse=False):
                    out.append((f"{mod_name}.{p_name}", p))
        return out
