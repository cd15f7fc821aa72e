"""Update methods: the contract (``base``), the registry, and one file or folder per family, each method
registered by name next to its class.

Adding a method: see docs/adding-a-method.md (the checklist) and tests/methods/test_contract.py.
"""

from fif.data.batch import Batch

# Importing a family's module registers its methods.
from fif.methods import (  # noqa: F401,E402
    distillation,  # lwf, zscl
    finetune,  # finetune, locked_text, locked_image
    peft,  # lora, dora, vera, galore
    regularizers,  # ewc, si, mas
    replay,  # er, der, derpp, gdumb
    selective,  # bitfit, lnfit
)
from fif.methods.base import (
    BaseMethod,
    BuildsDeployModel,
    BuildsOptimizer,
    CountedAsMergedAdapters,
    HookCost,
    LossOutput,
    NoOptions,
    TaskData,
    TaskInfo,
    UpdateMethod,
    deploy_model_for,
    freeze_all_but,
    freeze_batchnorm_statistics,
    optimizer_for,
    optimizer_state_bytes_of,
)
from fif.methods.registry import (
    build_method,
    method_class,
    method_config_problems,
    register_method,
    registered_methods,
    shard_problem,
)
from fif.model.loss import ClipLoss, clip_contrastive_loss
