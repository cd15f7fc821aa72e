"""Parameter-efficient methods (FiF §4, PEFT): LoRA, DoRA, VeRA and GaLore.

- ``config.py``: the options dataclasses (``method.rank=...``, ``method.targets=attn,mlp``, ...);
- ``attention.py``: open_clip attention with its projections as Linear modules, and back;
- ``inject.py``: HF peft adapters into the open_clip model, merged weights, plain deploy copies;
- ``adapters.py``: the ``lora``, ``dora`` and ``vera`` methods;
- ``galore.py``: the ``galore`` method and its projected AdamW.

See docs/methods.md.
"""

from fif.methods.peft import adapters, galore  # noqa: F401  (registers lora, dora, vera, galore)
