"""Which weights a task trains from when a method and a merge recipe both have a say: the precedence,
defined once here, for validation (:func:`composition_problems`) and the runner (:func:`merge_for_method`).

A method may own the weights each task starts from (``owns_start_weights`` on the class: GDumb's θ0
restart, EWC/SI/MAS anchors and LwF's teacher that must equal the next task's start, ZSCL's weight
ensemble), or train another architecture than it deploys (PEFT adapters, :class:`BuildsDeployModel`).
Loading merged weights at a task's start (``merge.init`` other than ``last``) would then silently give
another method. The rule:

* ``merge.init`` filled in by ``merge.preset`` yields: the method keeps its own start weights, and the
  preset's deploy side still merges (e.g. GDumb under ``ema_merge`` deploys the running merge of its
  retrained models);
* ``merge.init`` set explicitly is refused, with the fix;
* ``merge.deploy=online_ema`` (an average of the weights being trained) is refused for adapter methods,
  whose trained weights are not the deployed architecture.
"""

from __future__ import annotations

import dataclasses

from fif.config.schema import MERGE_PRESETS, MergeConfig
from fif.methods import method_class


def start_weights_owner(method: str) -> str:
    """Why ``method`` decides the weights each task trains from, or "" if it does not.

    Raises:
        KeyError: unknown method (the registry's message).
    """
    cls = method_class(method)
    if callable(getattr(cls, "deploy_model", None)):
        return "it trains adapters over the base weights, so merged (base-architecture) weights cannot be loaded into it"
    return getattr(cls, "owns_start_weights", "")


def init_from_preset(m: MergeConfig) -> bool:
    """Whether ``merge.init`` is the preset's (not set explicitly to another value)."""
    return m.preset is not None and MERGE_PRESETS[m.preset].get("init") == m.init


def composition_problems(m: MergeConfig, method: str) -> list[str]:
    """Problems of combining merge section ``m`` with update method ``method`` (empty if none)."""
    try:
        owner = start_weights_owner(method)
    except KeyError:
        return []  # reported by the method's own validation
    problems = []
    if owner and m.init != "last" and not init_from_preset(m):
        problems.append(
            f"merge.init={m.init}: method {method!r} owns the weights each task starts from ({owner}); drop "
            f"merge.init (a merge.preset's init yields to the method) or set merge.init=last, and merge on the "
            f"deploy side (merge.deploy=ema, all or last_zeroshot)"
        )
    if m.deploy == "online_ema" and callable(getattr(method_class(method), "deploy_model", None)):
        problems.append(
            f"merge.deploy=online_ema averages the weights being trained, but method {method!r} trains adapters "
            f"and deploys them merged into the base weights; use merge.preset=ema_merge or merge.deploy=ema, all "
            f"or last_zeroshot"
        )
    return problems


def merge_for_method(m: MergeConfig, method: str) -> tuple[MergeConfig, str | None]:
    """The merge section a run uses with ``method``, and a note when the method's start weights win.

    Call on a validated config (:func:`composition_problems` empty).

    Returns:
        ``(m, None)`` when nothing yields; else a copy with ``init="last"`` and a one-line note saying so.
    """
    owner = start_weights_owner(method)
    if not owner or m.init == "last":
        return m, None
    note = (
        f"merge.preset={m.preset}: each task trains from method {method!r}'s own start weights ({owner}), not "
        f"merge.init={m.init}; merge.deploy={m.deploy} still merges"
    )
    return dataclasses.replace(m, init="last"), note
