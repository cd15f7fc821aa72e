"""fif.studies.report: the HTML page, its figures and study.json from a hand-made study."""

from __future__ import annotations

import json

from fif.studies.execute import report_study
from study_fakes import fake_study


def test_report_states_each_finding_with_its_numbers(tmp_path):
    out = fake_study(tmp_path / "study")
    analysis, written = report_study(out)  # validation scores are there already: nothing is evaluated
    page = written.html.read_text()
    assert written.html == out / "report" / "study.html"
    assert "new accumulates more than base: reproduced. final A_KA: new − base = +6.00 pp, 95% CI [+3.52, +8.48], " \
           "paired over 3 seeds." in page
    assert "not reproduced: no difference (the interval contains 0)" in page
    assert "never on the reported test scores" in page and "12 of 12 runs finished" in page
    assert page.count('<img alt=') == len(written.pngs) == 6  # differences, paths, front, changes, 2 heat maps
    assert {p.name for p in written.pngs} == {"differences.png", "paths.png", "front.png", "changes.png",
                                              "heatmap-0.png", "heatmap-1.png"}
    data = json.loads(written.json.read_text())
    assert data["finished"] == 12 and data["tuning"] == "validation"
    claim = next(c for c in data["comparisons"] if c["claim"] == "new accumulates more than base")
    assert claim["difference"]["per_seed"] == [5.0, 6.0, 7.0] and claim["verdict"] == "reproduced"
    chosen = {v["variant"]: v["chosen"]["label"] for v in data["variants"]}
    assert chosen == {"base": "lr=0.0002", "new": "lr=0.0004"}


def test_partial_report_names_the_missing_runs(tmp_path):
    out = fake_study(tmp_path / "study", skip=("base_lr=0.0002_seed=2",))
    analysis, written = report_study(out, tmp_path / "elsewhere")
    assert written.html.parent == tmp_path / "elsewhere"
    assert "11 of 12 runs finished; still to run: base_lr=0.0002_seed=2" in written.html.read_text()
