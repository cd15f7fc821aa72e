"""Update methods: one file per family, each registered by name next to its class.

Adding a method: see docs/adding-a-method.md (the checklist) and tests/methods/test_contract.py.
"""

from fif.data.batch import Batch

# Importing a family's module registers its methods.
from fif.methods import (  # noqa: F401,E402  # noqa: F401,E402  (lwf, zscl; er, der, derpp, gdumb)
    distillation,
    finetune,
    peft,  # noqa: F401,E402  (lora, dora, vera, galore)
    regularizers,  # noqa: F401,E402  (ewc, si, mas)
    replay,
    selective,
)
from fif.methods.base import (
    HookCost,
    LossOutput,
    TaskInfo,
    UpdateMethod,
    build_method,
    freeze_all_but,
    method_class,
    method_config_problems,
    register_method,
    registered_methods,
)
from fif.model.loss import clip_contrastive_loss
