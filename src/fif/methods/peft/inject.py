"""Putting HF peft adapters into an open_clip model, merging them, and taking them out again.

The model stays the open_clip module: :func:`inject_adapters` swaps attention for its Linear-projection
form (:mod:`fif.methods.peft.attention`) and lets peft replace the targeted ``nn.Linear`` layers with its
tuner layers in place (``inject_adapter_in_model`` for LoRA/DoRA; VeRA keeps its shared random
projections on the tuner object, which ``inject_adapter_in_model`` refuses, so its tuner class is used
directly and only the injected model is kept). The adapters are then ordinary registered submodules:
they train, they are in ``state_dict()`` and they are checkpointed.

:func:`unload` gives back a plain open_clip module — adapters merged into the weights with peft's own
``merge``, attention restored — whose ``state_dict`` has exactly the base model's keys.
"""

from __future__ import annotations

import copy
import logging
import math

import torch
from torch import nn

from fif.methods.peft.attention import linearize_attention, restore_attention

log = logging.getLogger(__name__)

ADAPTER = "default"  # peft's adapter name; fif puts one adapter into a model
_ATTENTION_PARTS = {"attn", "attnpool", "attention", "self_attn", "attn_pool"}
# open_clip names its MLPs ``mlp`` (``c_fc``/``c_proj``); Hugging Face text towers (BERT, RoBERTa, XLM-R)
# name a block's MLP ``intermediate.dense`` and ``output.dense``. The attention output of those towers is
# ``attention.output.dense``, which the attention check (first) claims.
_MLP_PARTS = {"mlp", "intermediate", "output"}


def layer_kind(name: str) -> str | None:
    """``"attn"``, ``"mlp"`` or None for a module or parameter name, from its path components."""
    parts = set(name.split("."))  # attention first: HF's ``attention.output.dense`` is attention
    if parts & _ATTENTION_PARTS:
        return "attn"
    if parts & _MLP_PARTS:
        return "mlp"
    return None


def layer_tower(name: str) -> str:
    """``"image"`` for open_clip's ``visual.*``, else ``"text"``."""
    return "image" if name.startswith("visual.") else "text"


def target_layers(model: nn.Module, targets: list[str], towers: list[str]) -> list[str]:
    """Names of the ``nn.Linear`` layers of kind ``targets`` in ``towers`` that run as modules.

    Linear children of an ``nn.MultiheadAttention`` are left out: it reads their weights directly, so an
    adapter there would never run (call :func:`linearize_attention` first to make them targetable).
    """
    inside_mha = {f"{n}.{c}" for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)
                  for c, _ in m.named_children()}  # fmt: skip
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name not in inside_mha
        and layer_kind(name) in targets and layer_tower(name) in towers
    ]


def tuner_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, peft tuner layer) pairs in ``model``."""
    from peft.tuners.tuners_utils import BaseTunerLayer  # optional extra: pip install 'fif[peft]'

    return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def adapter_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The adapters' own parameters (everything of a tuner layer except its wrapped ``base_layer``)."""
    out = []
    for name, layer in tuner_layers(model):
        out += [(f"{name}.{n}", p) for n, p in layer.named_parameters() if not n.startswith("base_layer.")]
    return out


def inject_adapters(model: nn.Module, peft_config, targets: list[str], towers: list[str], arch: str = "") -> list[str]:
    """Put the adapters of ``peft_config`` on the ``targets`` layers of ``towers``, in place.

    A model that already holds adapters (a copy of an adapted model, a resumed run) keeps them if they
    are of the same kind and rank; they are not injected twice.

    Returns:
        The names of the adapted layers.

    Raises:
        ValueError: no layer matches, or the model holds adapters of another kind or rank.
    """
    existing = tuner_layers(model)
    if existing:
        _check_existing(existing, peft_config)
        return [n for n, _ in existing]
    linearize_attention(model)
    names = target_layers(model, targets, towers)
    if not names:
        raise ValueError(
            f"method.targets={','.join(targets)} method.towers={','.join(towers)} select no Linear layer of "
            f"model {arch or type(model).__name__!r}; widen targets/towers (valid: attn, mlp / image, text)"
        )
    peft_config.target_modules = names
    _inject(model, peft_config)
    log.info("%s adapters on %d layers (%s)", peft_config.peft_type, len(names), ", ".join(names[:4]) + ", ...")
    return names


def _inject(model: nn.Module, peft_config) -> None:
    import peft  # optional extra: pip install 'fif[peft]'

    if isinstance(peft_config, peft.VeraConfig):
        from peft.tuners.vera import VeraModel  # optional extra: pip install 'fif[peft]'

        VeraModel(model, peft_config, ADAPTER)  # injects into ``model``; the wrapper is not kept
    else:
        peft.inject_adapter_in_model(peft_config, model, adapter_name=ADAPTER)


def _check_existing(existing: list[tuple[str, nn.Module]], peft_config) -> None:
    import peft  # optional extra: pip install 'fif[peft]'
    from peft.tuners.lora import LoraLayer  # optional extra: pip install 'fif[peft]'
    from peft.tuners.vera import VeraLayer  # optional extra: pip install 'fif[peft]'

    name, layer = existing[0]
    want_vera = isinstance(peft_config, peft.VeraConfig)
    same_kind = isinstance(layer, VeraLayer) if want_vera else (
        isinstance(layer, LoraLayer) and bool(layer.use_dora.get(ADAPTER)) == bool(peft_config.use_dora)
    )
    if not same_kind or layer.r.get(ADAPTER) != peft_config.r:
        raise ValueError(
            f"the model already holds {type(layer).__module__}.{type(layer).__name__} adapters of rank "
            f"{layer.r.get(ADAPTER)} (at {name}); build the method on the base model, not an adapted one"
        )


def merged_weight(layer: nn.Module) -> torch.Tensor:
    """The base weight with the layer's adapter merged in (peft's ``merge`` on a copy of the layer).

    LoRA: W + s·B·A; DoRA: m / ‖W + s·B·A‖_row · (W + s·B·A); VeRA: W + diag(b)·B·diag(d)·A.
    """
    tmp = copy.deepcopy(layer)
    tmp.merge(safe_merge=True, adapter_names=[ADAPTER])
    return tmp.get_base_layer().weight.detach()


def unload(model: nn.Module) -> nn.Module:
    """A plain copy of ``model``: adapters merged into the weights, attention restored.

    Its ``state_dict`` has exactly the keys of the model before :func:`inject_adapters`.
    """
    plain = copy.deepcopy(model)
    for name, layer in tuner_layers(plain):
        layer.merge(safe_merge=True, adapter_names=[ADAPTER])
        plain.set_submodule(name, layer.get_base_layer())
    restore_attention(plain)
    plain.__dict__.pop("peft_config", None)  # peft's bookkeeping attribute, not a weight
    return plain


def base_architecture(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with the adapters taken out *unmerged* and attention restored.

    The base architecture holding the base weights (not the adapted function); unlike :func:`unload` it
    runs on the meta device (nothing is computed), which is what the budget's counting needs.
    """
    plain = copy.deepcopy(model)
    for name, layer in tuner_layers(plain):
        plain.set_submodule(name, layer.get_base_layer())
    restore_attention(plain)
    plain.__dict__.pop("peft_config", None)  # peft's bookkeeping attribute, not a weight
    return plain


@torch.no_grad()
def merge_and_reset_(model: nn.Module, seed: int, d_initial: float = 0.1) -> None:
    """Merge every adapter into its base weight, then reset it to the identity, in place.

    The function of the model is unchanged; training continues from fresh adapters on the merged
    weights. LoRA/DoRA: A is re-drawn as peft initialises it (kaiming uniform, a=√5) from a CPU
    generator seeded with ``seed`` (the same on every device), B = 0, and DoRA's magnitude becomes the
    merged weight's row norms; VeRA: b = 0, d = ``d_initial``.
    """
    from peft.tuners.lora import LoraLayer  # optional extra: pip install 'fif[peft]'
    from peft.tuners.vera import VeraLayer  # optional extra: pip install 'fif[peft]'

    generator = torch.Generator().manual_seed(seed)
    for _, layer in tuner_layers(model):
        base = layer.get_base_layer()
        base.weight.copy_(merged_weight(layer))
        if isinstance(layer, LoraLayer):
            a = layer.lora_A[ADAPTER].weight
            a.copy_(nn.init.kaiming_uniform_(torch.empty(a.shape, dtype=a.dtype), a=math.sqrt(5), generator=generator))
            layer.lora_B[ADAPTER].weight.zero_()
            if ADAPTER in layer.lora_magnitude_vector:
                magnitude = layer.lora_magnitude_vector[ADAPTER].weight
                magnitude.copy_(torch.linalg.norm(base.weight, dim=1).to(magnitude.dtype))
        elif isinstance(layer, VeraLayer):
            layer.reset_vera_parameters(ADAPTER, d_initial)
        else:
            raise TypeError(f"cannot reset adapters of type {type(layer).__name__}")
