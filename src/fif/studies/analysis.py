"""A study's results: each finished run's metrics, the grid point chosen per variant, means with intervals,
the paired comparisons with their verdicts and one sentence per finding.

:func:`load_records` reads the study folder; :func:`analyze` is pure (records in, numbers out), so the
statistics can be checked on hand-made inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fif.eval.metrics import ScoreMatrix
from fif.results.report import load_run, run_metrics
from fif.runner.state import is_finished
from fif.studies.plan import StudyPlan, StudyRun
from fif.studies.spec import AT, METRIC_NAMES, METRICS, Comparison
from fif.studies.stats import (
    Difference,
    Interval,
    midstream_minus_final_spread,
    paired_contrast,
    pareto_front,
    t_interval,
    verdict,
)
from fif.studies.tuning import choose_points, read_validation


@dataclass
class RunRecord:
    """One finished run of a study: its metrics (:func:`fif.results.report.run_metrics`), score matrix and
    validation score (None if it has none)."""

    run: StudyRun
    metrics: dict[str, Any]
    matrix: ScoreMatrix
    validation: dict[str, Any] | None = None


def load_records(out: str | Path, plan: StudyPlan) -> tuple[list[RunRecord], list[StudyRun]]:
    """The finished runs of study folder ``out`` as records, and the runs not finished yet."""
    out = Path(out)
    records, missing = [], []
    for r in plan.runs:
        if not is_finished(out / r.name):
            missing.append(r)
            continue
        data = load_run(out / r.name, label=r.name)
        records.append(RunRecord(r, run_metrics(data), data.matrix, read_validation(out, r.name)))
    return records, missing


def metric_value(metrics: dict[str, Any], metric: str, at: str) -> float | None:
    """``metric`` (a_ka, a_zs, gm) of a run at ``at``: final, trajectory_mean, or change (final − zero-shot)."""
    if at == "change":
        final, zs = metrics["final"].get(metric), metrics["zero_shot"].get(metric)
        return None if final is None or zs is None else final - zs
    return metrics[at].get(metric)


@dataclass
class PointSummary:
    """One grid point of one variant over its seeds: intervals of every metric, its validation score."""

    variant: str
    point: dict[str, str]
    label: str
    seeds: list[int]
    metrics: dict[str, dict[str, Interval]]  # at → metric → interval
    validation: Interval | None = None
    on_front: bool = False
    chosen: bool = False
    diverged: int = 0  # seeds of this point whose run diverged

    def mean(self, metric: str, at: str = "final") -> float | None:
        iv = self.metrics.get(at, {}).get(metric)
        return None if iv is None else iv.mean

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "point": self.point, "label": self.label, "seeds": self.seeds,
                "metrics": {at: {m: iv.to_dict() for m, iv in ms.items()} for at, ms in self.metrics.items()},
                "validation": None if self.validation is None else self.validation.to_dict(),
                "on_front": self.on_front, "chosen": self.chosen, "diverged": self.diverged}


@dataclass
class VariantSummary:
    """A variant at its chosen grid point: how it was chosen, its path (mean and sd per evaluation) and budget."""

    variant: str
    chosen: PointSummary | None
    how: str
    path: list[dict[str, float | None]] = field(default_factory=list)
    budget: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "how": self.how, "chosen": None if self.chosen is None else self.chosen.to_dict(),
                "path": self.path, "budget": self.budget}


@dataclass
class ComparisonResult:
    """A claim, the paired difference that tests it, the verdict and the sentence that states it."""

    comparison: Comparison
    difference: Difference | None
    verdict: str
    sentence: str

    def to_dict(self) -> dict[str, Any]:
        c = self.comparison
        return {"claim": c.claim, "label": c.label, "kind": c.kind, "metric": c.metric, "at": c.at,
                "weights": c.weights, "variants": c.variants, "expect": c.expect, "verdict": self.verdict,
                "sentence": self.sentence, "difference": None if self.difference is None else self.difference.to_dict()}


@dataclass
class StudyAnalysis:
    """Everything the study report shows."""

    plan: StudyPlan
    points: list[PointSummary]
    variants: list[VariantSummary]
    comparisons: list[ComparisonResult]
    finished: int
    missing: list[str]
    tuning_statement: str
    failed: dict[str, str] = field(default_factory=dict)  # diverged runs: name → error

    def variant(self, name: str) -> VariantSummary:
        return next(v for v in self.variants if v.variant == name)

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.plan.study.name, "preset": self.plan.preset, "quick": self.plan.quick,
                "tuning": self.plan.tuning, "tuning_statement": self.tuning_statement, "finished": self.finished,
                "runs": len(self.plan.runs), "missing": self.missing, "failed": self.failed,
                "seeds": self.plan.seeds(),
                "variants": [v.to_dict() for v in self.variants], "points": [p.to_dict() for p in self.points],
                "comparisons": [c.to_dict() for c in self.comparisons]}


# ----------------------------------------------------------------------------------------------
# Pure analysis


def _intervals(records: Sequence[RunRecord]) -> dict[str, dict[str, Interval]]:
    out: dict[str, dict[str, Interval]] = {}
    for at in AT:
        for m in METRICS:
            vals = [v for r in records if (v := metric_value(r.metrics, m, at)) is not None]
            if vals:
                out.setdefault(at, {})[m] = t_interval(vals)
    return out


def _point_key(point: dict[str, str]) -> str:
    return "|".join(f"{k}={v}" for k, v in point.items())


def summarize_points(plan: StudyPlan, records: Sequence[RunRecord], failed: Sequence[str] = ()) -> list[PointSummary]:
    """One :class:`PointSummary` per (variant, grid point) that has finished runs, in plan order, with the
    Pareto front (final A_KA and A_ZS means) of each variant's points marked and its diverged runs counted."""
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    order: list[tuple[str, str, dict[str, str]]] = []
    for r in plan.runs:
        key = (r.variant, _point_key(r.point))
        if key not in {(v, k) for v, k, _ in order}:
            order.append((r.variant, key[1], r.point))
    for rec in records:
        groups.setdefault((rec.run.variant, _point_key(rec.run.point)), []).append(rec)
    points = []
    for variant, key, point in order:
        recs = groups.get((variant, key), [])
        if not recs:
            continue
        val = [v[plan.study.select] for r in recs if r.validation and (v := r.validation).get(plan.study.select) is not None]
        diverged = sum(1 for r in plan.runs if r.name in failed and (r.variant, _point_key(r.point)) == (variant, key))
        points.append(PointSummary(variant, point, recs[0].run.point_label, sorted(r.run.seed for r in recs),
                                   _intervals(recs), t_interval(val) if val else None, diverged=diverged))
    for variant in plan.variants():
        mine = [p for p in points if p.variant == variant and p.mean("a_ka") is not None and p.mean("a_zs") is not None]
        for i in pareto_front([(p.mean("a_ka"), p.mean("a_zs")) for p in mine]):
            mine[i].on_front = True
    return points


def choose(plan: StudyPlan, points: Sequence[PointSummary], variant: str) -> tuple[PointSummary | None, str]:
    """The compared grid point of ``variant`` and how it was chosen (a phrase for the report)."""
    mine = [p for p in points if p.variant == variant]
    if not mine:
        return None, "no finished run"
    if any(p.diverged == 0 for p in mine):  # a setting that diverged on some seed is not a usable choice
        mine = [p for p in mine if p.diverged == 0]
    if len(mine) == 1 and plan.tuning == "fixed":
        return mine[0], "fixed (not tuned)"
    select = plan.study.select
    if plan.tuning == "validation":
        scores = {p.label: ([p.validation.mean] if p.validation else []) for p in mine}
        label = choose_points(scores, [p.label for p in mine])
        if label is not None:
            return next(p for p in mine if p.label == label), f"best validation {METRIC_NAMES[select]}"
    test = {p.label: ([p.mean(select)] if p.mean(select) is not None else []) for p in mine}
    label = choose_points(test, [p.label for p in mine])
    how = f"best test {METRIC_NAMES[select]} (no validation signal: optimistic)"
    if plan.tuning == "validation":
        how = f"best test {METRIC_NAMES[select]} (validation scores missing: optimistic)"
    return (next(p for p in mine if p.label == label) if label is not None else mine[0]), how


def mean_path(records: Sequence[RunRecord]) -> list[dict[str, float | None]]:
    """Per evaluation (zero-shot first): mean and sd over seeds of A_KA, A_ZS and GM, and the seed count."""
    trajs = [r.metrics["trajectory"] for r in records]
    if not trajs:
        return []
    length = min(len(t) for t in trajs)
    path = []
    for i in range(length):
        row: dict[str, float | None] = {"task": trajs[0][i]["task"], "n": float(len(trajs))}
        for m in METRICS:
            vals = [t[i][m] for t in trajs if t[i][m] is not None]
            row[m] = float(np.mean(vals)) if vals else None
            row[f"{m}_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        path.append(row)
    return path


def mean_matrix(records: Sequence[RunRecord]) -> ScoreMatrix | None:
    """The seeds' score matrices averaged (rows = evaluations, as many as the shortest run has)."""
    mats = [r.matrix for r in records if len(r.matrix.tasks)]
    if not mats:
        return None
    rows = min(len(m.tasks) for m in mats)
    datasets = list(mats[0].datasets)
    stack = np.stack([m.scores[:rows, [m.datasets.index(d) for d in datasets]] for m in mats
                      if all(d in m.datasets for d in datasets)])
    return ScoreMatrix(mats[0].tasks[:rows], tuple(datasets), dict(mats[0].roles), np.nanmean(stack, axis=0))


def _sentence(c: Comparison, diff: Difference | None, word: str) -> str:
    if diff is None:
        return f"{c.claim}: not measured (no seed has finished runs of every variant compared)."
    iv = diff.interval
    if iv.low is None:
        return f"{c.claim}: {word}; {c.label} = {iv.mean:+.2f} pp from one seed (no interval)."
    why = " (the interval contains 0)" if "no difference" in word else ""
    return (f"{c.claim}: {word}{why}. {c.label} = {iv.mean:+.2f} pp, 95% CI [{iv.low:+.2f}, {iv.high:+.2f}], "
            f"paired over {iv.n} seeds.")


def compare(c: Comparison, chosen: dict[str, list[RunRecord]]) -> ComparisonResult:
    """Test one claim on the chosen runs of each variant (variant → its records at the chosen point)."""
    if c.kind == "spread":
        names = c.variants or list(chosen)
        seeds = sorted(set.intersection(*(set(r.run.seed for r in chosen.get(v, [])) for v in names))) if names else []
        per_seed = {}
        for s in seeds:
            trajs = {v: [p[c.metric] for p in next(r for r in chosen[v] if r.run.seed == s).metrics["trajectory"]]
                     for v in names}
            if all(None not in t for t in trajs.values()) and (d := midstream_minus_final_spread(trajs)) is not None:
                per_seed[s] = d
        diff = paired_contrast({"spread": per_seed}, {"spread": 1.0}) if per_seed else None
    else:
        values = {v: {r.run.seed: val for r in chosen.get(v, []) if (val := metric_value(r.metrics, c.metric, c.at))
                      is not None} for v in c.weights}
        diff = paired_contrast(values, c.weights) if all(values.values()) else None
    word = "not measured" if diff is None else verdict(diff.interval, c.expect)
    return ComparisonResult(c, diff, word, _sentence(c, diff, word))


def tuning_statement(plan: StudyPlan) -> str:
    """What the grid points were chosen on, in one or two sentences (the report and the CLI print it)."""
    select = METRIC_NAMES[plan.study.select]
    keys = sorted({k for r in plan.runs for k in r.point})
    if plan.tuning == "fixed":
        fixed = dict(plan.runs[0].point) if plan.runs else {}
        if not fixed and plan.lr is not None:
            fixed = {"train.lr": format(plan.lr, "g")}
        values = ", ".join(f"{k}={v}" for k, v in fixed.items())
        return ("Nothing is tuned: every variant runs at its configured values" + (f" ({values})" if values else "")
                + "; a difference may partly be one of the learning rate.")
    if plan.tuning == "validation":
        v = plan.validation
        where = v.note if v and v.note else f"split {v.split} with {' '.join(v.overrides)}" if v else "?"
        return (f"Each variant's {', '.join(keys)} was chosen on the validation {select} of its deployed weights "
                f"({where}), never on the reported test scores; the Pareto plot shows the whole grid.")
    return (f"No validation signal for benchmark {plan.benchmark!r}: the report shows the whole front over each "
            f"variant's grid ({', '.join(keys)}), and the point compared is the one with the best test {select}, "
            "chosen on the reported scores: optimistic, in the same way for every variant.")


def analyze(plan: StudyPlan, records: Sequence[RunRecord], missing: Sequence[StudyRun] = (),
            failed: dict[str, str] | None = None) -> StudyAnalysis:
    """Choose each variant's grid point, summarise it, and test every claim of the study.

    Args:
        plan: the study's plan.
        records: its finished runs.
        missing: its runs that have not finished (listed in the report).
        failed: its runs that diverged (name → error), listed apart from the missing ones.
    """
    failed = dict(failed or {})
    points = summarize_points(plan, records, list(failed))
    variants, chosen_records = [], {}
    for name in plan.variants():
        point, how = choose(plan, points, name)
        recs = [r for r in records if r.run.variant == name and point is not None and r.run.point == point.point]
        if point is not None:
            point.chosen = True
        chosen_records[name] = recs
        budget = {"total_mafs": _mean([r.metrics["budget"]["total_mafs"] for r in recs]),
                  "spent_mafs": _mean([r.metrics["budget"]["spent_mafs"] for r in recs]),
                  "train_seconds": _mean([r.metrics["budget"]["train_seconds"] for r in recs])}
        variants.append(VariantSummary(name, point, how, mean_path(recs), budget))
    present = set(plan.variants())  # a quick grid runs some variants only: claims about the others are left out
    results = [compare(c, chosen_records) for c in plan.study.compare if set(c.weights or c.variants) <= present]
    return StudyAnalysis(plan, points, variants, results, len(records),
                         [r.name for r in missing if r.name not in failed], tuning_statement(plan), failed)


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None
