"""Minor updates of a deployed CLIP as an operation (`fif update`): a lineage of versions, one update at a time.

Python API (mirrors the CLI)::

    from fif import update
    update.init("models/acme", recipe="mini", pretrained="mini-base")
    result = update.apply("models/acme", data="mat/mini_digits")   # v1.1, released if the retention gate passes
    update.log_rows("models/acme"); update.show("models/acme", "v1.1"); update.diff("models/acme", "v1.0", "v1.1")
    update.evaluate("models/acme")   # fill the score table's empty cells (every version x every update dataset)
    update.rollback("models/acme"); update.promote("models/acme", "v1.2", reason="...")
    update.export("models/acme", "v1.1", "acme-v1.1.safetensors"); update.plan("models/acme")

Each update is the runner's per-task path (:mod:`fif.update.updating`), so a lineage after n single updates holds
what a ``fif run`` of the same n-task stream deploys. The folder: :mod:`fif.update.lineage`.
"""

from fif.update.create import GUIDANCE, init
from fif.update.lineage import (
    Lineage,
    LineageBusyError,
    LineageError,
    diff,
    export,
    fixed_set_point,
    log_rows,
    promote,
    rollback,
    show,
)
from fif.update.plan import plan, retention_gate
from fif.update.scores import evaluate, missing_cells
from fif.update.sources import LineageDataError
from fif.update.updating import ApplyResult, UpdatePlan, apply

__all__ = [
    "GUIDANCE",
    "ApplyResult",
    "Lineage",
    "LineageBusyError",
    "LineageDataError",
    "LineageError",
    "UpdatePlan",
    "apply",
    "diff",
    "evaluate",
    "export",
    "fixed_set_point",
    "init",
    "log_rows",
    "missing_cells",
    "plan",
    "promote",
    "retention_gate",
    "rollback",
    "show",
]
