"""The typed configuration tree: dataclasses, YAML presets, dotted ``key=value`` overrides.

``load_config(preset, overrides)`` merges a preset with overrides, converts everything to the
dataclasses below, and validates the whole tree up front, raising one :class:`ConfigError` that lists
every problem (unknown keys get the nearest valid names, wrong types get the expected type).

Method options live under ``method.*`` next to ``method.name`` and are checked against the method's
own config dataclass (see ``fif.methods``).

- :mod:`fif.config.schema`: the dataclasses (one per section, :class:`Config` holding them) and the valid
  choices of some fields;
- :mod:`fif.config.load`: presets, YAML files, overrides, typed conversion, ``dump_yaml``, ``field_help``;
- :mod:`fif.config.validate`: the cross-field checks.
"""

from fif.config.load import (
    PRESET_DIR,
    apply_overrides,
    dump_yaml,
    field_help,
    load_config,
    parse_override,
    preset_dict,
    preset_names,
    read_yaml,
)
from fif.config.schema import (
    MERGE_PRESETS,
    OPTIMIZER_IMPLS,
    OPTIMIZERS,
    TEMPERATURES,
    BudgetConfig,
    CheckpointConfig,
    Config,
    DataConfig,
    EvalConfig,
    GuardConfig,
    LogConfig,
    MergeConfig,
    MethodConfig,
    MixtureConfig,
    ModelConfig,
    RunConfig,
    StreamConfig,
    TrainConfig,
    to_dict,
)
from fif.config.validate import validate  # noqa: F401
from fif.core.typed import ConfigError, from_dict
from fif.merge.temporal import MERGE_DEPLOYS, MERGE_INITS
