"""`fif study`: listing, printing, expansion, SLURM scripts and errors; the --quick study end to end (slow)."""

from __future__ import annotations

import argparse

import pytest
import yaml

from fif.cli import CliError
from fif.cli import study as study_cli
from fif.runner.sweep import read_sweep

TINY = [
    "model.pretrained=null", "budget.ft_steps=4", "stream.tasks=2", "stream.datasets=[mini_digits,mini_letters]",
    "train.batch_size=16", "train.log_every=2", "eval.min_samples=20", "eval.batch_size=128", "run.device=cpu",
    "eval.datasets=[mini_digits,mini_letters,mini_colors,mini_shapes]",
    "data.options={pool_size: 200, train_per_class: 8, test_per_class: 4, eval_size: 40, retrieval_train: 20, "
    "retrieval_test: 20}",
]


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fif")
    study_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_list_print_and_expand(tmp_path, capsys):
    assert run(["study", "--list-studies"]) == 0
    text = capsys.readouterr().out
    assert "merging" in text and "paper: §7" in text
    assert run(["study", "schedules", "--print"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["overrides"] == ["merge.preset=none", "stream.tasks=10"]
    out = tmp_path / "m"
    assert run(["study", "mixtures", "stream.tasks=3", "--seeds", "0,1,2,3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "4 variants, seeds 0,1,2,3, 16 runs" in text and "Nothing is tuned" in text
    assert "estimate: 16 of 16 runs to go × 240 steps" in text and f"fif study --out {out} --run" in text
    assert "stream.tasks=3" in read_sweep(out).overrides
    assert run(["study", "--out", str(out), "--list"]) == 0
    assert capsys.readouterr().out.count(" new ") == 16
    script = tmp_path / "a.sh"
    assert run(["study", "--out", str(out), "--slurm", str(script), "--time", "1:00:00"]) == 0
    text = script.read_text()
    assert "#SBATCH --array=0-15" in text and "-m fif study --out" in text and "--run-here --resume" in text


def test_errors(tmp_path):
    with pytest.raises(CliError, match="one study NAME"):
        run(["study", "merging", "mixtures"])
    with pytest.raises(CliError, match="comma-separated integers"):
        run(["study", "merging", "--seeds", "a,b", "--out", str(tmp_path / "x")])
    with pytest.raises(KeyError, match="did you mean 'merging'"):
        run(["study", "mergin", "--out", str(tmp_path / "y")])
    run(["study", "merging", "--out", str(tmp_path / "z")])
    with pytest.raises(FileExistsError, match="a different study"):
        run(["study", "merging", "--seeds", "4", "--out", str(tmp_path / "z")])
    with pytest.raises(CliError, match="--out alone works on the study already there"):
        run(["study", "train.lr=1", "--out", str(tmp_path / "z")])
    with pytest.raises(Exception, match="method.name is set by variant"):
        run(["study", "methods", "method.name=lora", "--out", str(tmp_path / "w")])
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path, capsys):
    out = tmp_path / "quick"
    assert run(["study", "merging", *TINY, "--quick", "--out", str(out), "--run", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "[8/8] merging:" in text and "findings:" in text and "FT + EMA-merge reaches a higher GM" in text
    assert (out / "report" / "study.html").is_file() and len(list((out / "validation").glob("*.json"))) == 8
    assert run(["study", "--out", str(out), "--run", "--no-progress"]) == 0
    assert capsys.readouterr().out.count("already finished, skipped") == 8


def test_overrides_may_follow_the_flags(tmp_path, capsys):
    from fif.cli import main

    out = tmp_path / "m"
    assert main(["study", "mixtures", "--seeds", "0", "--out", str(out), "stream.tasks=3"]) == 0
    assert "stream.tasks=3" in read_sweep(out).overrides and "4 runs" in capsys.readouterr().out


def test_help_names_every_named_study(capsys):
    from fif.studies.catalog import STUDIES

    with pytest.raises(SystemExit):
        run(["study", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in STUDIES), [name for name in STUDIES if name not in text]
