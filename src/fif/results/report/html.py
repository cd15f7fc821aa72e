"""The report as one self-contained HTML page: inline CSS, plots as base64 PNG, no scripts, no links out."""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np

from fif.results.report.data import RunData

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; } h3 { margin-top: 1.5em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
td.pos { color: #1a6b1a; } td.neg { color: #a11; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
.meta { color: #666; font-size: 0.85em; }
"""


def fmt(value: Any, spec: str = ".2f", signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return format(value, ("+" if signed else "") + spec)


def _cell(value: Any, spec: str = ".2f", signed: bool = False) -> str:
    cls = ""
    if signed and isinstance(value, (int, float)) and np.isfinite(value) and value != 0:
        cls = ' class="pos"' if value > 0 else ' class="neg"'
    return f"<td{cls}>{fmt(value, spec, signed)}</td>"


def img_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def figure(png: bytes, caption: str) -> str:
    return f"<figure>{img_tag(png, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def comparison_table(metrics: Sequence[dict[str, Any]]) -> str:
    """One row per run: zero-shot, final and trajectory-mean A_KA / A_ZS / GM, forgetting, BWT, budget."""
    head = (
        '<tr><th class="l" rowspan="2">run</th><th class="l" rowspan="2">method</th><th class="l" rowspan="2">status</th>'
        '<th colspan="3">zero-shot</th><th colspan="3">final</th><th colspan="3">trajectory mean</th>'
        '<th rowspan="2">mean forgetting</th><th rowspan="2">mean BWT</th><th rowspan="2">MAFs spent / budget</th>'
        '<th rowspan="2">train s</th><th rowspan="2">eval s</th></tr>'
        "<tr>" + "<th>A_KA</th><th>A_ZS</th><th>GM</th>" * 3 + "</tr>"
    )
    rows = []
    for m in metrics:
        b = m["budget"]
        spent = fmt(b["spent_mafs"], ".3g")
        total = fmt(b["total_mafs"], ".3g")
        cells = [f'<td class="l">{html.escape(str(m[k]))}</td>' for k in ("label", "method", "status")]
        for part in ("zero_shot", "final", "trajectory_mean"):
            cells += [_cell(m[part].get(k)) for k in ("a_ka", "a_zs", "gm")]
        cells += [_cell(m["mean_forgetting"]), _cell(m["mean_backward_transfer"], signed=True)]
        cells += [f"<td>{spent} / {total}</td>", _cell(b["train_seconds"], ".1f"), _cell(b["eval_seconds"], ".1f")]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def dataset_table(run: RunData, metrics: dict[str, Any]) -> str:
    """Per dataset: role, zero-shot, final, change, best, forgetting and backward transfer."""
    m = run.matrix
    head = (
        '<tr><th class="l">dataset</th><th class="l">role</th><th>zero-shot</th><th>final</th><th>Δ vs zero-shot</th>'
        "<th>best</th><th>forgetting</th><th>BWT</th></tr>"
    )
    rows = []
    order = sorted(m.datasets, key=lambda d: (m.roles.get(d) != "adaptation", d))
    for d in order:
        col = m.column(d)
        finite = col[np.isfinite(col)]
        rows.append(
            "<tr>"
            f'<td class="l">{html.escape(d)}</td><td class="l">{html.escape(m.roles.get(d, "?"))}</td>'
            + _cell(float(col[0]) if len(col) else None)
            + _cell(float(col[-1]) if len(col) else None)
            + _cell(metrics["change_from_zero_shot"].get(d), signed=True)
            + _cell(float(finite.max()) if finite.size else None)
            + _cell(metrics["forgetting"].get(d))
            + _cell(metrics["backward_transfer"].get(d), signed=True)
            + "</tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def render_page(
    runs: Sequence[RunData], metrics: Sequence[dict[str, Any]], figures: dict[str, tuple[bytes, str]], title: str
) -> str:
    """The whole page. ``figures`` maps a file stem to (PNG bytes, caption); per-run stems end in ``-<i>``."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">fif report, {stamp}. Scores in percent: top-1 accuracy, or mean of image→text and '
        "text→image Recall@5 for retrieval. A_KA = mean over adaptation datasets, A_ZS = mean over "
        "evaluation-only datasets, GM = √(A_KA·A_ZS). Forgetting = best score after a dataset was first "
        "trained on minus the final score; BWT = final score minus the score right after the last task "
        "that trained on it. Evaluations inside the stream use FiF's fixed subsets; the first and last "
        "are on full test sets.</p>",
        "<h2>Comparison</h2>",
        comparison_table(metrics),
    ]
    for stem in ("trajectory", "metrics", "loss"):
        if stem in figures:
            parts.append(figure(*figures[stem]))
    for i, (run, m) in enumerate(zip(runs, metrics)):
        parts.append(f"<h2>{html.escape(run.label)}</h2>")
        parts.append(
            f'<p class="meta">{html.escape(str(run.path))} · method {html.escape(run.method)} · {html.escape(run.status)}'
            f" · {len(run.matrix.tasks)} evaluations</p>"
        )
        for stem in (f"heatmap-{i}", f"budget-{i}", f"steps-{i}"):
            if stem in figures:
                parts.append(figure(*figures[stem]))
        parts.append("<h3>Per dataset</h3>")
        parts.append(dataset_table(run, m))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
