"""`fif schedule list|plot` through its own argparse wiring (no other command modules needed)."""

from __future__ import annotations

import argparse

import pytest

from fif.cli import CliError
from fif.cli import schedule as schedule_cli


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fif")
    schedule_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_plot_writes_the_png_and_prints_the_peaks(tmp_path, capsys):
    out = tmp_path / "lr.png"
    argv = ["schedule", "plot", "--schedules", "cosine,autoregressive_cosine", "--tasks", "5", "--steps", "100"]
    assert run([*argv, "--lr", "1e-5", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    text = capsys.readouterr().out
    assert "autoregressive_cosine: task peaks / lr = 1, 0.49" in text


def test_plot_all_in_a_grid(tmp_path):
    out = tmp_path / "all.svg"
    assert run(["schedule", "plot", "--schedules", "all", "--tasks", "3", "--steps", "40", "--layout", "grid",
                "--out", str(out)]) == 0
    assert out.read_text().lstrip().startswith("<?xml")


def test_unknown_schedule_is_a_user_error(tmp_path):
    with pytest.raises(CliError, match="did you mean cosine"):
        run(["schedule", "plot", "--schedules", "cosine,cosin", "--out", str(tmp_path / "x.png")])


def test_list_names_every_schedule(capsys):
    assert run(["schedule", "list"]) == 0
    assert "rsqrt_recovered" in capsys.readouterr().out
