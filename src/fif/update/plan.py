"""The lineage's two judgements: the retention gate of one candidate, and minor vs major update (`fif update plan`).

Both are pure functions of recorded metrics and settings (the reading happens in :func:`plan`).

The guidance they encode (Roth, Udandarao et al., NeurIPS 2024): *minor* updates (whole subdomains or concepts,
modest compute, over a long horizon) are what continual pretraining with fine-tuning + EMA merging, replay and a
meta learning-rate schedule serves; zero-shot retention on held-out data is what they erode, and the
autoregressive meta schedule lowers each update's peak learning rate like 1/(t+1)², so updates far past the
planned horizon learn little. When retention keeps falling, candidates keep failing the gate, or the horizon is
spent, the guidance is a *major* update: re-pretrain (or start a new lineage from a new base) on broad data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fif.config import read_yaml
from fif.update.lineage import BASE, RECIPE, Lineage

SETTINGS = {
    "ft_steps": "budget of one update in full fine-tuning steps (default: the recipe's budget.ft_steps / stream.tasks)",
    "max_zs_drop": "retention gate: the largest A_ZS drop (points) vs the deployed version that still releases",
    "max_dataset_drop": "retention gate: the largest drop (points) of any one guard set vs the deployed version "
                        "that still releases (null: off)",
    "guard": "the held-out datasets the gate watches (default: the recipe benchmark's eval-only datasets)",
    "pool": "the pretraining pool replayed in every update (default: the recipe benchmark's)",
    "horizon": "updates the meta schedule is planned for (default: the recipe's stream.tasks)",
    "major_zs_drop": "plan: recommend a major update once A_ZS has fallen this many points below the base",
    "max_held": "plan: recommend a major update after this many candidates in a row were held",
    "backfill": "after each apply, score the existing versions on its new dataset (true | false; fif update eval "
                "fills the cells later)",
}


def retention_gate(before: Mapping[str, Any], after: Mapping[str, Any], max_zs_drop: float, against: str,
                   max_dataset_drop: float | None = None) -> dict[str, Any]:
    """Whether a candidate keeps the guard sets' zero-shot accuracy (A_ZS, their mean) within ``max_zs_drop``
    points of the version it would replace, and (with ``max_dataset_drop``) every guard set within
    ``max_dataset_drop`` points of its own score; and what regressed.

    Args:
        before / after: the two versions' metrics (``scores`` in percent and ``roles`` per dataset).
        max_zs_drop: the largest allowed drop of A_ZS, in points.
        against: the name of the version compared with.
        max_dataset_drop: the largest allowed drop of any one guard set, in points (None: not checked).

    Returns:
        ``{"passed", "against", "a_zs_before", "a_zs_after", "zs_drop", "max_zs_drop", "max_dataset_drop",
        "regressions": [{dataset, before, after, delta}, ...] (worst first), "dataset_failures": [{dataset, before,
        after, delta}, ...] (the guard sets past ``max_dataset_drop``, worst first), "summary"}``.

    Raises:
        ValueError: no guard set was scored on both versions.
    """
    guard = [n for n, r in after["roles"].items() if r == "eval_only" and n in before.get("scores", {})]
    if not guard:
        raise ValueError("retention gate: no guard set was evaluated on both versions")
    b = sum(before["scores"][g] for g in guard) / len(guard)
    a = sum(after["scores"][g] for g in guard) / len(guard)
    drop = b - a
    regressions = sorted(
        ({"dataset": g, "before": before["scores"][g], "after": after["scores"][g],
          "delta": round(after["scores"][g] - before["scores"][g], 4)} for g in guard
         if after["scores"][g] < before["scores"][g]),
        key=lambda r: r["delta"],
    )
    failures = [] if max_dataset_drop is None else [r for r in regressions if -r["delta"] > max_dataset_drop]
    passed = drop <= max_zs_drop and not failures
    summary = (f"A_ZS {b:.2f} -> {a:.2f} ({a - b:+.2f} points vs {against}; the gate allows a drop of "
               f"{max_zs_drop:g})")
    if failures:
        summary += (f"; {len(failures)} guard set(s) dropped more than the {max_dataset_drop:g} points allowed per "
                    "set: " + ", ".join(f"{r['dataset']} {r['delta']:+.2f}" for r in failures))
    return {"passed": passed, "against": against, "a_zs_before": round(b, 4), "a_zs_after": round(a, 4),
            "zs_drop": round(drop, 4), "max_zs_drop": max_zs_drop, "max_dataset_drop": max_dataset_drop,
            "regressions": regressions, "dataset_failures": failures, "summary": summary}


def peak_fraction(update_index: int) -> float:
    """The autoregressive cosine's peak of update ``update_index`` (0-based) as a fraction of the first's, in the
    many-steps limit: sin²(π / (2 (t + 1))) (see :func:`fif.train.schedules.autoregressive_peak_factor`)."""
    return math.sin(math.pi / (2 * (update_index + 1))) ** 2


def recommend(history: list[Mapping[str, Any]], base: Mapping[str, Any] | None, settings: Mapping[str, Any],
              schedule: str, since: list[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Minor or major update next, with the reasons, from the deployed chain's history.

    Args:
        history: version.json of every update in the deployed chain (oldest first; the last is deployed).
        base: v1.0's record (its metrics, if measured).
        settings: the lineage's settings (``horizon``, ``major_zs_drop``, ``max_held``).
        schedule: the recipe's ``train.schedule``.
        since: the versions made after the deployed one (the trailing held ones count toward ``max_held``).

    Returns:
        ``{"recommendation": "minor" | "major", "reasons": [...], "facts": {...}}``.
    """
    released = [v for v in history if v["status"] == "released"]
    held_in_a_row = 0
    for v in reversed(list(since)):
        if v["status"] != "held":
            break
        held_in_a_row += 1
    n = len(released)
    spent = sum((v.get("budget") or {}).get("spent_mafs") or 0.0 for v in released)
    zs_base = ((base or {}).get("metrics") or {}).get("a_zs")
    zs_now = (released[-1]["metrics"] or {}).get("a_zs") if released else zs_base
    facts = {"updates": n, "horizon": settings["horizon"], "held_in_a_row": held_in_a_row, "spent_mafs": spent,
             "a_zs_base": zs_base, "a_zs_deployed": zs_now,
             "a_ka": [(v["version"], (v.get("metrics") or {}).get("a_ka")) for v in released]}
    major, minor = [], []
    if n >= settings["horizon"]:
        peak = f"; the next update's peak learning rate would be {peak_fraction(n):.1%} of the first's" \
            if schedule.startswith("autoregressive") else ""
        major.append(f"{n} updates reach the planned horizon of {settings['horizon']}{peak}: later updates learn "
                     "little under the meta schedule")
    else:
        minor.append(f"{n} of {settings['horizon']} planned updates done")
    if zs_base is not None and zs_now is not None:
        fall = zs_base - zs_now
        line = f"A_ZS {zs_base:.2f} (base) -> {zs_now:.2f} (deployed), {fall:.2f} points of retention lost"
        (major if fall >= settings["major_zs_drop"] else minor).append(
            line + (f" (>= {settings['major_zs_drop']:g}): minor updates keep eroding it" if fall >= settings[
                "major_zs_drop"] else f" (< {settings['major_zs_drop']:g})"))
    if held_in_a_row >= settings["max_held"]:
        major.append(f"the last {held_in_a_row} candidates failed the retention gate: the new data no longer fits a "
                     "minor update of this model")
    elif held_in_a_row:
        minor.append(f"{held_in_a_row} candidate(s) held in a row (a major update after {settings['max_held']})")
    return {"recommendation": "major" if major else "minor", "reasons": major or minor, "facts": facts}


def plan(root: str | Path) -> dict[str, Any]:
    """`fif update plan`: read the lineage and say whether the next update should be minor or major, and why.

    Raises:
        FileNotFoundError: not a lineage folder.
    """
    lin = Lineage.open(root)
    chain = [lin.version(v) for v in lin.chain(lin.deployed)]
    newest = max((int(v["version"].split(".")[1]) for v in chain), default=0)
    since = [v for v in lin.versions if v["version"] != BASE and int(v["version"].split(".")[1]) > newest]
    schedule = str(read_yaml(lin.root / RECIPE).get("train", {}).get("schedule", ""))
    return recommend(chain, lin.version(BASE), lin.settings, schedule, since)
