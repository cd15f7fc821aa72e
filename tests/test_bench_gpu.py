"""benchmarks/bench_gpu.py runs on CPU with a tiny model (the CI smoke test; GPU figures come from a GPU)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "bench_gpu.py"
TINY = ["--arch", "fif-mini-rn32", "--batch", "8", "--steps", "2", "--warmup", "1", "--no-compile", "--device", "cpu",
        "--eval-images", "32", "--eval-batch", "16", "--workers", "0", "--data-images", "8", "--data-steps", "2",
        "--data-size", "64"]


def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.usefixtures("one_thread")
def test_bench_gpu_measures_every_row_on_cpu(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert bench().main([*TINY, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["what"].split(" (")[0] for r in rows] == [
        "fif step", "reference step", "bare step", "eval", "eval", "data"]
    assert all(r["per_s"] > 0 for r in rows)
    assert all(r["tflops"] > 0 for r in rows[:3]) and all(r["peak_gib"] is None for r in rows)  # no CUDA: no peak
    printed = capsys.readouterr().out
    assert "fif-mini-rn32, global batch 8" in printed and "CPU" in printed


@pytest.mark.slow  # two processes under torchrun (~40 s on 2 loaded cores)
def test_bench_gpu_runs_under_torchrun(tmp_path):
    out = tmp_path / "rows.json"
    assert bench().main([*TINY, "--ranks", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert "2 rank(s)" in result["header"] and result["rows"][0]["what"] == "fif step (eager)"
