"""Model merging: operators over state dicts, streamed tensor by tensor.

Pure functions (no I/O beyond reading the inputs you name, no globals, seeded randomness):

* :func:`merge` ``(operator, models, base=None, *, lines=None, copy_keys=(), **options)`` — merge by
  operator name; :func:`iter_merge` yields the result key by key; :func:`operator_names` lists the
  operators, :func:`build_options` validates options;
* operators (``fif.merge.operators``): interpolation, slerp, task_arithmetic, ties, dare, breadcrumbs,
  magmax, model_stock — each a per-tensor function with an options dataclass;
* LiNeS (``fif.merge.depth``): :func:`block_depths`, :func:`lines_scales`, :func:`apply_lines`, and the
  ``lines=`` option of every task-vector operator;
* over time (``fif.merge.temporal``): :func:`history_weights`, :func:`ema_update_`, :func:`running_merge`,
  the merge config's axes and their checks (the runner's :class:`fif.runner.merger.TemporalMerger` runs them);
* inputs (``fif.merge.sources``): :class:`StateSource`, :class:`DictSource`, :class:`SafetensorsSource`.

See docs/merging.md for the operator reference and memory figures.
"""

from fif.merge.core import apply_lines, build_options, get_operator, iter_merge, merge, operator_names
from fif.merge.depth import LINES_SCHEDULES, LinesOptions, block_depths, lines_scale, lines_scales
from fif.merge.operators import (
    OPERATORS,
    BreadcrumbsOptions,
    DareOptions,
    InterpolationOptions,
    MagMaxOptions,
    ModelStockOptions,
    Operator,
    SlerpOptions,
    TaskArithmeticOptions,
    TiesOptions,
    register_operator,
)
from fif.merge.sources import (
    DictSource,
    MergeError,
    SafetensorsSource,
    StateSource,
    TensorSpec,
    as_source,
    check_compatible,
)
from fif.merge.temporal import (
    HISTORY_SCHEMES,
    MERGE_DEPLOYS,
    MERGE_INITS,
    ema_update_,
    history_weights,
    merge_config_problems,
    running_merge,
)

__all__ = [
    "OPERATORS",
    "HISTORY_SCHEMES",
    "BreadcrumbsOptions",
    "DareOptions",
    "DictSource",
    "InterpolationOptions",
    "LINES_SCHEDULES",
    "LinesOptions",
    "MagMaxOptions",
    "MergeError",
    "ModelStockOptions",
    "Operator",
    "SafetensorsSource",
    "SlerpOptions",
    "StateSource",
    "TaskArithmeticOptions",
    "TensorSpec",
    "TiesOptions",
    "apply_lines",
    "as_source",
    "block_depths",
    "build_options",
    "check_compatible",
    "ema_update_",
    "get_operator",
    "history_weights",
    "iter_merge",
    "lines_scale",
    "lines_scales",
    "merge",
    "merge_config_problems",
    "operator_names",
    "register_operator",
    "running_merge",
]
