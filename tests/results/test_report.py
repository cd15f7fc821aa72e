"""Report: metrics from the fixture events.jsonl (worked out by hand), interrupted runs, the HTML page
(self-contained; loads in headless Chromium with no console errors and every plot shown)."""

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fif.results.report import load_run, run_metrics, write_report

FIXTURE = Path(__file__).parents[1] / "fixtures" / "run_small"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return write_report([FIXTURE, FIXTURE], out)


def test_metrics_from_fixture():
    # Scores (A, B, R | E1, E2): zs 10 20 30 | 50 70; t0 40 20 30 | 48 68; t1 50 60 28 | 46 66; t2 35 55 70 | 45 64.
    m = run_metrics(load_run(FIXTURE))
    assert m["status"] == "finished" and m["method"] == "finetune" and m["evaluations"] == 4
    assert m["zero_shot"]["a_ka"] == pytest.approx(20.0) and m["zero_shot"]["a_zs"] == pytest.approx(60.0)
    assert m["final"]["a_ka"] == pytest.approx(160 / 3) and m["final"]["a_zs"] == pytest.approx(54.5)
    assert m["final"]["gm"] == pytest.approx((160 / 3 * 54.5) ** 0.5)
    assert m["trajectory_mean"]["a_ka"] == pytest.approx((20 + 30 + 46 + 160 / 3) / 4)
    assert m["trajectory_mean"]["a_zs"] == pytest.approx((60 + 58 + 56 + 54.5) / 4)
    assert m["change_from_zero_shot"] == {"A": 25.0, "B": 35.0, "R": 40.0, "E1": -5.0, "E2": -6.0}
    # A first trained in task 0 (best 50 after task 1), B in task 1 (60), R only in the last task.
    assert m["forgetting"] == {"A": 15.0, "B": 5.0, "R": None}
    # A and B last trained in task 1: final minus the score right after it.
    assert m["backward_transfer"] == {"A": -15.0, "B": -5.0, "R": None}
    assert m["mean_forgetting"] == pytest.approx(10.0) and m["mean_backward_transfer"] == pytest.approx(-10.0)
    assert m["budget"] == {"total_mafs": 3e10, "spent_mafs": 2.9e10, "train_seconds": 21.0, "eval_seconds": 11.0}


def test_loaded_run_parts():
    run = load_run(FIXTURE)
    assert run.matrix.tasks == (-1, 0, 1, 2) and run.full == [True, False, False, True]
    assert [t.spent_mafs for t in run.ledger] == [1e10, 1e10, 9e9]
    assert [t.eval_seconds for t in run.ledger] == [2.0, 2.0, 2.0]
    assert run.losses[:3] == [(5, 2.75), (10, 2.5), (15, 2.35)]  # task 1's steps continue after task 0's 10
    assert len(run.step_evals) == 1 and run.task_datasets() == [["A"], ["A", "B"], ["R"]]


def interrupted_copy(tmp_path: Path, keep_events: int) -> Path:
    run = tmp_path / "interrupted"
    shutil.copytree(FIXTURE, run)
    lines = (FIXTURE / "events.jsonl").read_text().splitlines(keepends=True)
    (run / "events.jsonl").write_text("".join(lines[:keep_events]) + '{"event": "train", "ta')  # torn last line
    return run


def test_interrupted_run_reports(tmp_path):
    run = interrupted_copy(tmp_path, 14)  # up to the evaluation after task 1
    data = load_run(run)
    m = run_metrics(data)
    assert data.status == "unfinished: 2/3 tasks" and not data.finished
    assert m["final"]["task"] == 1 and m["final"]["a_ka"] == pytest.approx(46.0)
    assert m["forgetting"] == {"A": -10.0, "B": None, "R": None}  # A improved: 40 after task 0, 50 now
    rep = write_report([run], tmp_path / "out")
    assert rep.html.is_file() and "unfinished: 2/3 tasks" in rep.html.read_text()


def test_run_with_no_evaluation_yet(tmp_path):
    run = interrupted_copy(tmp_path, 1)  # only run_start
    rep = write_report([run], tmp_path / "out")
    assert rep.metrics[0]["final"] == {} and rep.html.is_file()


def test_missing_log_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="fif run folder"):
        load_run(tmp_path)


def test_page_is_self_contained(report):
    page = report.html.read_text()
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page)  # nothing loaded from elsewhere
    srcs = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)">', page)
    assert len(srcs) == page.count("<img") == 3 + 3 * 2  # trajectory, metrics, loss + per run heat map, budget, steps
    for src in srcs:
        assert base64.b64decode(src)[:8] == b"\x89PNG\r\n\x1a\n"
    names = sorted(p.name for p in report.pngs)
    assert "trajectory.png" in names and "heatmap-1.png" in names and "budget-0.png" in names
    assert "run_small (2)" in page  # the same folder twice gets distinct labels
    data = json.loads(report.json.read_text())
    assert [r["label"] for r in data["runs"]] == ["run_small", "run_small (2)"]


PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  window.__errors.push(String(e.message || ("failed to load " + ((e.target && e.target.src) || "?").slice(0, 40))));
}, true);
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  var pre = document.createElement("pre");
  pre.id = "fif-probe";
  pre.textContent = JSON.stringify({images: imgs.length, bad: bad, errors: window.__errors});
  document.body.appendChild(pre);
});
</script>"""


def chromium_probe(page: Path, tmp_path: Path) -> tuple[dict, list[str]]:
    """Load a copy of ``page`` with a probe script in headless Chromium; return (probe result, console lines)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); the HTML report is not browser-tested")
    probed = tmp_path / f"probe-{page.name}"
    probed.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    cmd = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'chrome'}",
        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom", probed.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="fif-probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"chromium did not run the probe (rc {proc.returncode}): {proc.stderr[-2000:]}"
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return json.loads(found.group(1).replace("&quot;", '"')), console


def test_page_in_headless_chromium(report, tmp_path):
    probe, console = chromium_probe(report.html, tmp_path)
    assert probe["images"] == 9 and probe["bad"] == 0, probe
    assert probe["errors"] == [] and console == [], (probe, console)


def test_chromium_probe_catches_a_broken_page(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head></head><body><img src="data:image/png;base64,AAAA">'
                    "<script>console.error('boom');</script></body></html>")
    probe, console = chromium_probe(page, tmp_path)
    assert probe["images"] == 1 and probe["bad"] == 1 and probe["errors"]
    assert any("boom" in line for line in console)
