"""The study report: ``report/study.html`` (one self-contained page in the run report's style), one PNG per
figure and ``report/study.json`` (every number on the page)."""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fif.core.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from fif.eval.metrics import ScoreMatrix
from fif.results.report.html import CSS, figure, fmt
from fif.results.report.plots import png_bytes
from fif.studies import plots
from fif.studies.analysis import RunRecord, StudyAnalysis, mean_matrix
from fif.studies.spec import METRIC_NAMES
from fif.studies.stats import Interval

REPORT_DIR = "report"


@dataclass
class StudyReport:
    """What :func:`write_study_report` wrote."""

    html: Path
    json: Path
    pngs: list[Path]


def render_figures(analysis: StudyAnalysis, records: list[RunRecord]) -> dict[str, tuple[bytes, str]]:
    """Every figure as PNG bytes with its caption, by file stem."""
    figs = {
        "paths": (png_bytes(plots.plot_paths(analysis)),
                  "Accumulation vs retention after every task, each variant at its compared grid point: mean over "
                  "seeds, bars ±1 sd across seeds; star = zero-shot, square = end."),
    }
    if any(len([p for p in analysis.points if p.variant == v.variant]) > 1 for v in analysis.variants):
        figs["front"] = (png_bytes(plots.plot_fronts(analysis)),
                         "Final A_ZS vs final A_KA of every grid point (mean over seeds, bars: 95% t-intervals); "
                         "lines join each variant's Pareto front; the compared point is ringed.")
    if any(r.difference is not None for r in analysis.comparisons):
        figs["differences"] = (png_bytes(plots.plot_differences(analysis.comparisons)),
                               "Each claim's paired difference over seeds with its 95% t-interval.")
    matrices: dict[str, ScoreMatrix] = {}
    for v in analysis.variants:
        recs = [r for r in records if r.run.variant == v.variant and v.chosen is not None and r.run.point == v.chosen.point]
        m = mean_matrix(recs)
        if m is not None:
            matrices[v.variant] = m
    if matrices:
        figs["changes"] = (png_bytes(plots.plot_final_changes(analysis, matrices)),
                           "Per dataset, final score minus zero-shot, per variant (mean over seeds, pp).")
    for i, (name, m) in enumerate(matrices.items()):
        figs[f"heatmap-{i}"] = (png_bytes(plots.plot_variant_heatmap(name, m)),
                                f"{name}: change from zero-shot per dataset after every task (mean over seeds, pp).")
    return figs


def _cell(value: float | None, spec: str = ".2f", signed: bool = False) -> str:
    return f"<td>{fmt(value, spec, signed)}</td>"


def _interval_cell(iv: Interval | None) -> str:
    if iv is None:
        return "<td>–</td>"
    if iv.low is None:
        return f"<td>{iv.mean:.2f}</td>"
    return f"<td>{iv.mean:.2f} <span class=\"meta\">[{iv.low:.2f}, {iv.high:.2f}]</span></td>"


def summary_table(analysis: StudyAnalysis) -> str:
    """One row per variant at its compared point: final, trajectory-mean and change, each with its interval."""
    head = ('<tr><th class="l" rowspan="2">variant</th><th class="l" rowspan="2">compared point</th>'
            '<th class="l" rowspan="2">chosen by</th><th rowspan="2">seeds</th>'
            '<th colspan="3">final</th><th colspan="3">trajectory mean</th><th colspan="2">change from zero-shot</th>'
            '<th rowspan="2">MAFs spent</th></tr><tr>' + "<th>A_KA</th><th>A_ZS</th><th>GM</th>" * 2
            + "<th>A_KA</th><th>A_ZS</th></tr>")
    rows = []
    for v in analysis.variants:
        p = v.chosen
        cells = [f'<td class="l">{html.escape(v.variant)}</td>', f'<td class="l">{html.escape(p.label if p else "-")}</td>',
                 f'<td class="l">{html.escape(v.how)}</td>', f"<td>{len(p.seeds) if p else 0}</td>"]
        for at, metrics in (("final", ("a_ka", "a_zs", "gm")), ("trajectory_mean", ("a_ka", "a_zs", "gm")),
                            ("change", ("a_ka", "a_zs"))):
            cells += [_interval_cell(p.metrics.get(at, {}).get(m) if p else None) for m in metrics]
        cells.append(_cell(v.budget.get("spent_mafs"), ".3g"))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def grid_table(analysis: StudyAnalysis) -> str:
    """Every grid point: seeds, validation score, final A_KA / A_ZS / GM with intervals, front and choice."""
    select = METRIC_NAMES[analysis.plan.study.select]
    head = (f'<tr><th class="l">variant</th><th class="l">grid point</th><th>seeds</th><th>validation {select}</th>'
            '<th>final A_KA</th><th>final A_ZS</th><th>final GM</th><th>on front</th><th>compared</th></tr>')
    rows = []
    for p in analysis.points:
        rows.append("<tr>" + f'<td class="l">{html.escape(p.variant)}</td><td class="l">{html.escape(p.label)}</td>'
                    f"<td>{len(p.seeds)}{f' ({p.diverged} diverged)' if p.diverged else ''}</td>"
                    + _interval_cell(p.validation)
                    + "".join(_interval_cell(p.metrics.get("final", {}).get(m)) for m in ("a_ka", "a_zs", "gm"))
                    + f"<td>{'yes' if p.on_front else ''}</td><td>{'yes' if p.chosen else ''}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def comparison_table(analysis: StudyAnalysis) -> str:
    head = ('<tr><th class="l">claim</th><th class="l">difference</th><th>mean (pp)</th><th>95% interval</th>'
            '<th>seeds</th><th class="l">verdict</th></tr>')
    rows = []
    for r in analysis.comparisons:
        iv = r.difference.interval if r.difference else None
        interval = "–" if iv is None or iv.low is None else f"[{iv.low:+.2f}, {iv.high:+.2f}]"
        rows.append("<tr>" + f'<td class="l">{html.escape(r.comparison.claim)}</td>'
                    f'<td class="l">{html.escape(r.comparison.label)}</td>'
                    + _cell(iv.mean if iv else None, signed=True) + f"<td>{interval}</td><td>{iv.n if iv else 0}</td>"
                    + f'<td class="l">{html.escape(r.verdict)}</td></tr>')
    return f"<table>{head}{''.join(rows)}</table>"


def render_page(analysis: StudyAnalysis, figures: dict[str, tuple[bytes, str]], out: Path) -> str:
    plan, study = analysis.plan, analysis.plan.study
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"fif study {study.name}{' (quick)' if plan.quick else ''} on {plan.preset}"
    status = (f"{analysis.finished} of {len(plan.runs)} runs finished"
              + (f"; still to run: {', '.join(analysis.missing[:8])}{', …' if len(analysis.missing) > 8 else ''}"
                 if analysis.missing else "")
              + (f"; diverged (left out): {', '.join(analysis.failed)}" if analysis.failed else ""))
    budget = (f"every variant gets {plan.budget_mafs:.4g} MAFs (the compute of fine-tuning the first architecture)"
              if plan.budget_mafs else "every run gets the same budget in MAFs (budget.ft_steps of full fine-tuning)")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">fif study report, {stamp}. {html.escape(str(out))}. {html.escape(status)}. '
        f"Seeds {', '.join(map(str, plan.seeds()))}; {html.escape(budget)}. Scores in percent; intervals are 95% "
        "Student-t intervals over seeds; differences are paired by seed. A difference whose interval contains 0 "
        "is reported as no difference.</p>",
        f"<p>{html.escape(study.description)}</p>" if study.description else "",
        f"<p><b>The paper:</b> {html.escape(study.paper)}</p>" if study.paper else "",
        f"<p><b>Tuning:</b> {html.escape(analysis.tuning_statement)}</p>",
        "<h2>Findings</h2>",
        "<ul>" + "".join(f"<li>{html.escape(r.sentence)}</li>" for r in analysis.comparisons) + "</ul>"
        if analysis.comparisons else "<p>The study states no claims.</p>",
    ]
    if "differences" in figures:
        parts.append(figure(*figures["differences"]))
    parts += ["<h3>Claims</h3>", comparison_table(analysis), "<h2>Variants</h2>", summary_table(analysis)]
    for stem in ("paths", "front"):
        if stem in figures:
            parts.append(figure(*figures[stem]))
    parts += ["<h2>Every grid point</h2>", grid_table(analysis), "<h2>Per dataset</h2>"]
    parts += [figure(*figures[s]) for s in figures if s == "changes" or s.startswith("heatmap-")]
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p) + "\n"


def write_study_report(out: str | Path, analysis: StudyAnalysis, records: list[RunRecord],
                       report_dir: str | Path | None = None) -> StudyReport:
    """Write ``study.html``, ``study.json`` and one PNG per figure into ``report_dir`` (default
    ``<study>/report``); partial studies get a partial report that says which runs are missing.
    """
    out = Path(out)
    where = Path(report_dir) if report_dir is not None else out / REPORT_DIR
    figures = render_figures(analysis, records)
    pngs = [atomic_write_bytes(where / f"{stem}.png", png) for stem, (png, _) in figures.items()]
    page = atomic_write_text(where / "study.html", render_page(analysis, figures, out))
    data: dict[str, Any] = analysis.to_dict()
    js = atomic_write_json(where / "study.json", data)
    return StudyReport(page, js, pngs)
