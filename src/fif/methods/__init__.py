"""Update methods: one file per family, each registered by name next to its class.

Adding a method: see docs/adding-a-method.md (the checklist) and tests/methods/test_contract.py.
"""

from fif.methods.base import (  # noqa: F401
    Batch,
    HookCost,
    LossOutput,
    TaskInfo,
    UpdateMethod,
    build_method,
    clip_contrastive_loss,
    freeze_all_but,
    method_class,
    method_config_problems,
    register_method,
    registered_methods,
)

# Importing a family's module registers its methods.
from fif.methods import finetune, selective  # noqa: F401,E402
from fif.methods import peft  # noqa: F401,E402  (lora, dora, vera, galore)
from fif.methods import regularizers  # noqa: F401,E402  (ewc, si, mas)
from fif.methods import distillation, replay  # noqa: F401,E402  (lwf, zscl; er, der, derpp, gdumb)
