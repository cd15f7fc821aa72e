"""The merge driver: validate inputs and options once, then merge key by key.

``merge(operator, models, base, **options)`` is the one entry point; configs and ``fif merge`` name the
operator by string. Memory: the result (one model) plus, while a key is merged, a few tensors of that
key's size (the operator's accumulators, the base's tensor and the input being folded in), however
many models are merged. Inputs given as safetensors paths or lazy :class:`StateSource` s are never
loaded whole.

Per key, in this order:

1. non-float tensors (int buffers such as BatchNorm's ``num_batches_tracked``, position ids) and keys
   matching ``copy_keys`` are copied from the base (task-vector operators) or the first model;
2. float tensors are upcast to float32 (float64 stays float64) on the first model's device;
3. the operator makes one pass over the inputs, loaded one at a time (task-vector operators get
   τ_i = θ_i − θ_0); a task-vector operator's result τ becomes θ_0 + s·τ with s the key's LiNeS scale
   (1 without LiNeS);
4. if every input was identical (for task-vector operators: every model equals the base) the result is
   that tensor exactly, whatever the operator's rounding — e.g. a float attention mask full of -inf
   never turns into NaN;
5. the result is cast back to the first model's dtype.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fif.merge.depth import LinesOptions, lines_scales
from fif.merge.operators import OPERATORS, Operator
from fif.merge.sources import MergeError, SourceLike, StateSource, as_source, check_compatible

log = logging.getLogger(__name__)


def operator_names() -> list[str]:
    """Names of every registered operator, sorted."""
    return sorted(OPERATORS)


def get_operator(name: str) -> Operator:
    """The registered operator ``name``.

    Raises:
        MergeError: unknown name, with the nearest names and the full list.
    """
    if name not in OPERATORS:
        close = difflib.get_close_matches(str(name), list(OPERATORS), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise MergeError(f"unknown merge operator {name!r}{hint} Valid: {', '.join(operator_names())}")
    return OPERATORS[name]


def build_options(operator: str, options: Mapping[str, Any]) -> Any:
    """The options dataclass of ``operator`` filled from ``options`` (defaults for the rest).

    Raises:
        MergeError: an unknown option (with the valid ones) or an invalid value.
    """
    op = get_operator(operator)
    valid = [f.name for f in dataclasses.fields(op.options)]
    unknown = [name for name in options if name not in valid]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, valid, n=2, cutoff=0.5)
            hints.append(f"{name!r}" + (f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""))
        raise MergeError(
            f"unknown option {', '.join(hints)} for merge operator {operator!r}. "
            f"Valid options: {', '.join(valid) or '(none)'}"
        )
    try:
        return op.options(**options)
    except MergeError:
        raise
    except (TypeError, ValueError) as e:
        raise MergeError(f"invalid options {dict(options)} for merge operator {operator!r}: {e}") from e


@dataclass
class _Plan:
    """Everything validated before the first tensor is read."""

    op: Operator
    options: Any
    models: list[StateSource]
    base: StateSource | None
    keys: list[str]
    scales: dict[str, float] | None
    copy_keys: tuple[str, ...]

    @property
    def reference(self) -> StateSource:
        """Where unmerged tensors are copied from."""
        return self.base if self.base is not None else self.models[0]

    def copies(self, key: str) -> bool:
        return not self.reference.spec(key).is_float or any(fnmatch.fnmatchcase(key, p) for p in self.copy_keys)


def _plan(
    operator: str,
    models: Sequence[SourceLike],
    base: SourceLike | None,
    lines: LinesOptions | Mapping[str, float] | None,
    copy_keys: Sequence[str],
    options: Mapping[str, Any],
) -> _Plan:
    op = get_operator(operator)
    opts = build_options(operator, options)
    if isinstance(models, (Mapping, str)) or not isinstance(models, Sequence):
        raise MergeError(f"models must be a list of state dicts, files or sources, got a {type(models).__name__}")
    n = len(models)
    if n < op.min_models or (op.max_models is not None and n > op.max_models):
        wanted = f"exactly {op.min_models}" if op.min_models == op.max_models else f"at least {op.min_models}"
        raise MergeError(f"merge operator {operator!r} merges {wanted} models, got {n}")
    if op.task_vectors and base is None:
        raise MergeError(
            f"merge operator {operator!r} works on task vectors θ_i − θ_0: give the base θ_0 (base=...)"
        )
    if not op.task_vectors and base is not None:
        raise MergeError(
            f"merge operator {operator!r} averages weights and takes no base; put the base among the models "
            f"(e.g. FT-merge: models=[latest, zeroshot]) or use a task-vector operator: "
            f"{', '.join(o for o in operator_names() if OPERATORS[o].task_vectors)}"
        )
    if lines is not None and not op.task_vectors:
        raise MergeError(f"LiNeS scales task vectors; merge operator {operator!r} has none (use e.g. task_arithmetic)")
    check = getattr(opts, "check_models", None)
    if check is not None:
        check(n)
    sources = [as_source(m, f"models[{i}]") for i, m in enumerate(models)]
    base_source = as_source(base, "base") if base is not None else None
    keys = check_compatible(sources + ([base_source] if base_source is not None else []))
    scales = None
    if lines is not None:
        lines = lines if isinstance(lines, LinesOptions) else LinesOptions(**lines)
        scales = lines_scales(keys, lines.alpha, lines.beta, lines.schedule)
    unused = [p for p in copy_keys if not any(fnmatch.fnmatchcase(k, p) for k in keys)]
    if unused:
        log.warning("merge: copy_keys pattern(s) %s match no key", ", ".join(map(repr, unused)))
    return _Plan(op, opts, sources, base_source, keys, scales, tuple(copy_keys))


def _compute_dtype(dtypes: list[torch.dtype]) -> torch.dtype:
    return torch.float64 if torch.float64 in dtypes else torch.float32


class _KeyInputs:
    """One key's inputs for an operator, loaded one at a time as they are iterated.

    Task-vector mode yields τ_i = θ_i − θ_0 (fresh tensors); weight mode yields θ_i. Either way it
    records whether every input it loaded equals the reference (θ_0, or θ_1 in weight mode).
    """

    def __init__(
        self, key: str, models: list[StateSource], base: Tensor | None, device: torch.device, dtype: torch.dtype
    ):
        self.key, self.models, self.base = key, models, base
        self.device, self.dtype = device, dtype
        self.first: Tensor | None = None  # θ_1 in weight mode, kept for the equality check
        self.all_equal = True
        self.loaded = 0

    def __len__(self) -> int:
        return len(self.models)

    def __iter__(self) -> Iterator[Tensor]:
        for src in self.models:
            theta = src.get(self.key).to(device=self.device, dtype=self.dtype)
            reference = self.base if self.base is not None else self.first
            if reference is None:
                self.first = reference = theta
            self.all_equal = self.all_equal and torch.equal(theta, reference)
            self.loaded += 1
            out = theta - self.base if self.base is not None else theta
            del theta  # in task-vector mode only τ_i stays alive
            yield out
            del out

    @property
    def identical(self) -> bool:
        """Whether all inputs were loaded and all equal the reference."""
        return self.loaded >= len(self.models) and self.all_equal


def _merge_key(plan: _Plan, key: str) -> Tensor:
    """The merged tensor of one key (a new tensor, never one of the inputs)."""
    if plan.copies(key):
        return plan.reference.get(key).clone()
    spec = plan.models[0].spec(key)
    sources = plan.models + ([plan.base] if plan.base is not None else [])
    cdtype = _compute_dtype([s.spec(key).dtype for s in sources])
    base = plan.base.get(key).to(device=spec.device, dtype=cdtype) if plan.base is not None else None
    inputs = _KeyInputs(key, plan.models, base, spec.device, cdtype)
    merged = plan.op.fn(key, inputs, plan.options)
    if inputs.identical:  # exact, whatever the operator's rounding (and no NaN from -inf − -inf)
        same = base if base is not None else inputs.first
        return same.to(spec.dtype, copy=True)
    if base is None:
        return merged.to(spec.dtype)
    scale = plan.scales[key] if plan.scales is not None else 1.0
    return torch.add(base, merged, alpha=scale).to(spec.dtype)  # base may be the caller's tensor: not in place


def iter_merge(
    operator: str,
    models: Sequence[SourceLike],
    base: SourceLike | None = None,
    *,
    lines: LinesOptions | Mapping[str, float] | None = None,
    copy_keys: Sequence[str] = (),
    **options: Any,
) -> Iterator[tuple[str, Tensor]]:
    """Merge key by key, yielding ``(key, merged tensor)`` in the first model's key order.

    Same arguments as :func:`merge`. Everything is validated before this returns, so errors surface
    at the call, not at the first ``next``. Consumers that write each tensor out as it comes keep only
    one key's tensors in memory.
    """
    plan = _plan(operator, models, base, lines, copy_keys, options)

    def run() -> Iterator[tuple[str, Tensor]]:
        with torch.no_grad():
            for key in plan.keys:
                yield key, _merge_key(plan, key)

    return run()


def merge(
    operator: str,
    models: Sequence[SourceLike],
    base: SourceLike | None = None,
    *,
    lines: LinesOptions | Mapping[str, float] | None = None,
    copy_keys: Sequence[str] = (),
    **options: Any,
) -> dict[str, Tensor]:
    """Merge models with a named operator.

    Args:
        operator: one of :func:`operator_names` (interpolation, slerp, task_arithmetic, ties, dare,
            breadcrumbs, magmax, model_stock).
        models: state dicts, modules, ``.safetensors`` paths or :class:`StateSource` s, all with the same
            keys and shapes. Files and sources are read one tensor at a time.
        base: θ_0 for task-vector operators (required by them, rejected by the others).
        lines: LiNeS options (``LinesOptions`` or ``{"alpha": .., "beta": .., "schedule": ..}``) to scale the merged task
            vector per residual block; task-vector operators only.
        copy_keys: ``fnmatch`` patterns of float keys to copy from the base (or first model) unmerged.
        **options: the operator's options (see its options dataclass, e.g. ``TiesOptions``).

    Returns:
        A new state dict (no tensor shared with the inputs), dtypes and device of the first model.

    Raises:
        MergeError: unknown operator or option, invalid option value, wrong number of models, missing or
            unexpected base, key sets or shapes that differ between inputs, unreadable files.
    """
    return dict(iter_merge(operator, models, base, lines=lines, copy_keys=copy_keys, **options))


def apply_lines(
    model: SourceLike, base: SourceLike, alpha: float = 0.5, beta: float = 0.5, schedule: str = "linear"
) -> dict[str, Tensor]:
    """LiNeS on one fine-tuned model: θ = θ_0 + s(key)·(θ − θ_0), s = α + β·(l/(L − 1))^p per block
    (p = 1, 2, ½ for the linear, quadratic, sqrt schedules).

    See :mod:`fif.merge.depth`; Wang et al. 2024, arXiv 2410.17146.
    """
    return merge("task_arithmetic", [model], base, lines=LinesOptions(alpha, beta, schedule), lam=1.0)
