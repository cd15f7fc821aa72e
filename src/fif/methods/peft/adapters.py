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
from typing import Any, Callable

import torch
from torch import nn

from fif.methods.base import TaskInfo, UpdateMethod, register_method
from fif.methods.peft.config import LoraOptions, VeraOptions
from fif.methods.peft.inject import adapter_parameters, inject_adapters, merge_and_reset_, unload
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


def _adapter_method(
    name: str, class_name: str, options_type: type, peft_config: Callable[[Any], Any], doc: str
) -> type[UpdateMethod]:
    """Register as ``name`` an UpdateMethod that trains the adapters of ``peft_config(options)`` alone.

    LoRA, DoRA and VeRA differ only in their peft config, so their one class is written here once (the
    UpdateMethod contract keeps inheritance one level deep: no shared base class). The adapters are
    injected at construction, trained alone, and merged into the base weights to deploy.
    """

    class AdapterMethod(UpdateMethod):
        Config = options_type

        def __init__(self, clip: Clip, config: LoraOptions | VeraOptions, label_smoothing: float = 0.0):
            super().__init__(clip, config, label_smoothing)
            self.layers = inject_adapters(clip.model, peft_config(config), config.targets, config.towers, clip.arch)
            self.d_initial = getattr(config, "d_initial", 0.1)
            # Seeds the re-drawn A of merge_every_task; drawn once from the run's seeded global RNG.
            self.reinit_seed = int(torch.randint(0, 2**31 - 1, ()).item())

        def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
            return adapter_parameters(self.clip.model)

        def end_task(self, task: TaskInfo) -> None:
            if self.config.merge_every_task:
                merge_and_reset_(self.clip.model, self.reinit_seed + task.index, self.d_initial)

        def deploy_weights(self) -> dict[str, torch.Tensor]:
            return unload(self.clip.model).state_dict()

        def deploy_model(self, weights: dict[str, torch.Tensor]) -> nn.Module:
            plain = unload(self.clip.model)
            plain.load_state_dict(weights)
            return plain

        def state_dict(self) -> dict[str, Any]:
            return {"reinit_seed": self.reinit_seed}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            if set(state) != {"reinit_seed"}:
                raise ValueError(f"adapter method state must hold exactly 'reinit_seed', got keys {sorted(state)}")
            self.reinit_seed = int(state["reinit_seed"])

    AdapterMethod.__name__ = AdapterMethod.__qualname__ = class_name
    AdapterMethod.__doc__ = doc
    return register_method(name)(AdapterMethod)


# ----------------------------------------------------------------------------------------------
# The methods: each is its peft config.

Lora = _adapter_method(
    "lora", "Lora", LoraOptions, peft_config=lambda options: lora_config(options, dora=False),
    doc="LoRA (Hu et al. 2022): W + (alpha/r)·B·A on attention and MLP Linear layers of both towers; A, B train.",
)
Dora = _adapter_method(
    "dora", "Dora", LoraOptions, peft_config=lambda options: lora_config(options, dora=True),
    doc="DoRA (Liu et al. 2024): m·(W + s·B·A)/‖W + s·B·A‖ per output row; the magnitude m and A, B train.",
)
Vera = _adapter_method(
    "vera", "Vera", VeraOptions, peft_config=vera_config,
    doc="VeRA (Kopiczko et al. 2024): W + diag(b)·B·diag(d)·A, frozen random A, B shared by all layers; b, d train.",
)
