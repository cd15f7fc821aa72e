"""`fif sweep` (expansion, listing, SLURM script, errors) and `fif report` of a sweep folder; no training here
(tests/runner/test_sweep.py runs a tiny sweep)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from fif.cli import CliError
from fif.cli import report as report_cli
from fif.cli import sweep as sweep_cli
from fif.runner.sweep import read_sweep

FIXTURE = Path(__file__).parent.parent / "fixtures" / "run_small"


def run(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fif")
    module.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_expand_list_and_slurm(tmp_path, capsys):
    out = tmp_path / "sweep1"
    assert run(sweep_cli, ["sweep", "budget.ft_steps=8", "--preset", "mini", "--out", str(out), "--grid",
                           "method.name=finetune,lnfit", "--grid", "train.lr=1e-4,5e-4"]) == 0
    text = capsys.readouterr().out
    assert "method=lnfit_lr=5e-4    new      method.name=lnfit train.lr=5e-4" in text and "4 runs" in text
    assert len(read_sweep(out).runs) == 4 and len(list((out / "configs").glob("*.yaml"))) == 4
    assert run(sweep_cli, ["sweep", "--out", str(out), "--list"]) == 0  # the sweep already there
    assert capsys.readouterr().out.count(" new ") == 4
    script = tmp_path / "one.sh"
    assert run(sweep_cli, ["sweep", "--out", str(out), "--slurm", str(script), "--time", "2:00:00"]) == 0
    assert "#SBATCH --array=0-3" in script.read_text() and "sbatch" in capsys.readouterr().out
    with pytest.raises(CliError, match="expanded for one GPU per run"):
        run(sweep_cli, ["sweep", "--out", str(out), "--slurm", str(script), "--gpus-per-task", "4"])


def test_multi_gpu_sweep_runs_data_parallel(tmp_path, capsys):
    out, script = tmp_path / "s", tmp_path / "s.sh"
    run(sweep_cli, ["sweep", "--out", str(out), "--grid", "run.seed=0,1", "--slurm", str(script), "--gpus-per-task", "8"])
    assert read_sweep(out).overrides == ["train.distributed=ddp"]
    assert "distributed: ddp" in (out / "configs" / "seed=1.yaml").read_text()
    assert "--standalone --nproc_per_node=8 -m fif sweep" in script.read_text()


def test_errors(tmp_path):
    with pytest.raises(CliError, match="with --run"):
        run(sweep_cli, ["sweep", "--out", str(tmp_path), "--resume"])
    with pytest.raises(FileNotFoundError, match="not a sweep folder"):
        run(sweep_cli, ["sweep", "--out", str(tmp_path)])
    with pytest.raises(Exception, match="did you mean"):
        run(sweep_cli, ["sweep", "--out", str(tmp_path / "x"), "--grid", "method.name=finetuen"])
    assert not (tmp_path / "x").exists()


def test_report_of_a_sweep_folder(tmp_path, capsys):
    out = tmp_path / "sweep"
    run(sweep_cli, ["sweep", "--out", str(out), "--grid", "method.name=finetune,lnfit"])
    with pytest.raises(CliError, match="no run with events yet"):
        run(report_cli, ["report", str(out)])
    shutil.copytree(FIXTURE, out / "method=finetune")  # one run has started; the other is not shown
    assert run(report_cli, ["report", str(out)]) == 0
    assert "method=finetune" in capsys.readouterr().out
    assert (out / "report" / "report.html").is_file()
