"""`fif data show|materialize` on the command line."""

from __future__ import annotations

from fif.cli import main

SMALL = ["pool_size=40", "train_per_class=2", "test_per_class=2", "eval_size=30", "retrieval_train=8", "retrieval_test=8"]


def test_show_prints_the_table_and_writes_the_grid(tmp_path, capsys):
    grid = tmp_path / "grid.png"
    assert main(["data", "show", "mini", *SMALL, "--grid", str(grid), "--datasets", "mini_colors,mini_scenes"]) == 0
    out = capsys.readouterr().out
    assert "mini_colors" in out and "eval_only" in out and "mini_scenes" in out and "mini_digits" not in out
    assert grid.is_file() and f"sample grid: {grid}" in out


def test_materialize_writes_split_files(tmp_path, capsys):
    assert main(["data", "materialize", "mini", str(tmp_path), *SMALL, "--datasets", "mini_sizes"]) == 0
    assert (tmp_path / "mini_sizes_train.json").is_file() and (tmp_path / "mini_sizes_test.json").is_file()
    assert "2 splits written" in capsys.readouterr().out


def test_bad_option_is_a_clean_error(capsys):
    assert main(["data", "show", "mini", "pool_sise=3", "--grid", ""]) == 2
    err = capsys.readouterr().err
    assert "pool_size" in err and "Traceback" not in err
    assert main(["data", "show", "mini", "nonsense"]) == 2
    assert "key=value" in capsys.readouterr().err
