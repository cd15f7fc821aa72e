"""LoRA, DoRA and VeRA: low-rank adapters on the attention and MLP Linear layers of both towers.

Only the adapters train; the base weights stay frozen. The deployed model is a plain open_clip model
with the adapters merged into its weights (exact: merging a linear adapter is a change of weights, not
of function), so evaluation, ``final.safetensors`` and ``fif eval`` see the base architecture's keys.

Across tasks (FiF trains the same adapters through the stream): by default the adapters carry on from
task to task, and the optimizer sees the same parameters. With ``merge_every_task=true`` each task end
merges them into the base weights and resets them to the identity, so every task learns a fresh
low-rank update on top of everything learnt so far (the rank limits each task's change, not the
stream's).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from fif.methods.base import BaseMethod, TaskInfo
from fif.methods.peft.config import LoraOptions, VeraOptions
from fif.methods.peft.inject import (
    adapter_parameters,
    base_architecture,
    inject_adapters,
    layer_tower,
    merge_and_reset_,
    unload,
)
from fif.methods.registry import register_method
from fif.model.clip import Clip


def lora_config(options: LoraOptions, dora: bool):
    """peft's LoraConfig for ``options`` (target modules are filled in at injection)."""
    import peft  # optional extra: pip install 'fif[peft]'

    return peft.LoraConfig(
        r=options.rank, lora_alpha=options.scale * options.rank, lora_dropout=options.dropout,
        use_dora=dora, bias="none", init_lora_weights=True, target_modules=[],
    )


def vera_config(options: VeraOptions):
    """peft's VeraConfig for ``options``.

    The shared random A and B are not saved (``save_projection=False``): peft draws them from a CPU
    generator seeded with ``projection_seed``, so they are the same on every device and are rebuilt on
    resume; the checkpoint holds the trained scaling vectors b and d.
    """
    import peft  # optional extra: pip install 'fif[peft]'

    with warnings.catch_warnings():  # peft warns about save_projection=False; it is deliberate (see above)
        warnings.simplefilter("ignore", UserWarning)
        return peft.VeraConfig(
            r=options.rank, vera_dropout=options.dropout, d_initial=options.d_initial,
            projection_prng_key=options.projection_seed, save_projection=False, bias="none", target_modules=[],
        )


# ----------------------------------------------------------------------------------------------
# What the three methods share: everything but their peft config


def draw_reinit_seed() -> int:
    """The seed of the A re-drawn by ``merge_every_task``: one draw from the run's seeded global RNG."""
    return int(torch.randint(0, 2**31 - 1, ()).item())


# What FiF's reference adapted, per fif target kind (its LoRA, DoRA and VeRA, every block of both towers, by
# default): each block's fused attention in_proj (q, k and v), and the MLP's c_proj. Its out_proj adapter
# never ran (F.multi_head_attention_forward reads out_proj.weight itself) and its name filter skipped c_fc
# ("fc" in the name). With these, Tab. 4's LoRA r=4 / r=64 GFLOPs come out exactly (docs/budget.md).
REFERENCE_ADAPTED_WEIGHTS = {"attn": ("attn.in_proj_weight",), "mlp": ("mlp.c_proj.weight",)}


def paper_merged_step(
    model: nn.Module, targets: list[str], towers: list[str], rank: int
) -> tuple[nn.Module, list[str], int]:
    """The reference's step for an adapted ``model``: its base architecture, the weights the reference merged
    adapters into (of ``targets`` in ``towers``), and ``rank`` (:class:`~fif.methods.base.CountedAsMergedAdapters`)."""
    plain = base_architecture(model)
    suffixes = tuple(s for t in targets for s in REFERENCE_ADAPTED_WEIGHTS[t])
    names = [n for n, p in plain.named_parameters() if n.endswith(suffixes) and layer_tower(n) in towers]
    return plain, names, rank


def reinit_seed_from(state: dict[str, Any]) -> int:
    """The ``reinit_seed`` of an adapter method's checkpoint state.

    Raises:
        ValueError: the state holds other keys.
    """
    if set(state) != {"reinit_seed"}:
        raise ValueError(f"adapter method state must hold exactly 'reinit_seed', got keys {sorted(state)}")
    return int(state["reinit_seed"])


class AdapterMethod(BaseMethod):
    """A peft adapter on the Linear layers of ``config.targets`` in ``config.towers``: only the adapters train,
    the deployed weights are the base architecture's with the adapters merged in, and ``merge_every_task``
    folds them into the base weights at each task end (A re-drawn per task from ``reinit_seed``).

    A subclass gives its ``peft_config()`` and, if its reset differs from LoRA's, ``d_initial``.
    """

    requires = ("peft",)  # checked when the config is validated
    d_initial = 0.1  # VeRA's d after a reset; unused by LoRA/DoRA

    def __init__(self, clip: Clip, config: LoraOptions | VeraOptions):
        super().__init__(clip, config)
        self.layers = inject_adapters(clip.model, self.peft_config(), config.targets, config.towers, clip.arch)
        self.reinit_seed = draw_reinit_seed()

    def peft_config(self):
        """The peft config of this method (target modules are filled in at injection)."""
        raise NotImplementedError

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return adapter_parameters(self.clip.model)

    def end_task(self, task: TaskInfo) -> None:
        if self.config.merge_every_task:
            merge_and_reset_(self.clip.model, self.reinit_seed + task.index, self.d_initial)

    def deploy_weights(self) -> dict[str, torch.Tensor]:
        """The base architecture's weights with the adapters merged in."""
        return unload(self.clip.model).state_dict()

    def deploy_model(self, weights: dict[str, torch.Tensor]) -> nn.Module:
        """The base architecture (adapters taken out) holding ``weights``; the training model is untouched."""
        plain = unload(self.clip.model)
        plain.load_state_dict(weights)
        return plain

    def paper_merged_step(self, model: nn.Module) -> tuple[nn.Module, list[str], int]:
        """FiF's count of this method (``budget.accounting=paper``): see :func:`paper_merged_step`."""
        return paper_merged_step(model, self.config.targets, self.config.towers, self.config.rank)

    def state_dict(self) -> dict[str, Any]:
        return {"reinit_seed": self.reinit_seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reinit_seed = reinit_seed_from(state)


# ----------------------------------------------------------------------------------------------
# The methods: each is its peft config


@register_method("lora")
class Lora(AdapterMethod):
    """LoRA (Hu et al. 2022): W + (alpha/r)·B·A on attention and MLP Linear layers of both towers; A, B train."""

    Config = LoraOptions

    def peft_config(self):
        return lora_config(self.config, dora=False)


@register_method("dora")
class Dora(AdapterMethod):
    """DoRA (Liu et al. 2024): m·(W + s·B·A)/‖W + s·B·A‖ per output row; the magnitude m and A, B train."""

    Config = LoraOptions

    def peft_config(self):
        return lora_config(self.config, dora=True)


@register_method("vera")
class Vera(AdapterMethod):
    """VeRA (Kopiczko et al. 2024): W + diag(b)·B·diag(d)·A, frozen random A, B shared by all layers; b, d train."""

    Config = VeraOptions

    def peft_config(self):
        return vera_config(self.config)

    @property
    def d_initial(self) -> float:
        return self.config.d_initial
