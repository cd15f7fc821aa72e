"""`fif run` as a user sees it: the per-task table, where results went, --print-config, --help everywhere."""

from __future__ import annotations

import json

import pytest
import yaml

from fif.cli import main

TINY = [
    "model.pretrained=null", "budget.ft_steps=4", "stream.tasks=2", "stream.datasets=[mini_digits,mini_letters]",
    "train.batch_size=8", "eval.min_samples=10", "eval.datasets=[mini_digits,mini_colors]", "run.threads=1",
    "data.options={pool_size: 60, train_per_class: 4, test_per_class: 2, eval_size: 16, retrieval_train: 8, "
    "retrieval_test: 8}",
]


def test_run_prints_a_row_per_evaluation_and_where_results_went(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--no-progress", "--preset", "mini", "--out", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert "2 tasks, method finetune + ema_merge (init ema, deploy ema)" in lines[0]
    head = lines.index(next(line for line in lines if line.split()[:2] == ["task", "concepts"]))
    assert lines[head].split() == ["task", "concepts", "steps", "MAFs", "spent", "A_KA", "A_ZS", "GM"]
    rows = [line.split() for line in lines[head + 1 : head + 4]]
    assert [r[0] for r in rows] == ["zs", "1", "2"]
    assert rows[0][1:4] == ["-", "-", "-"] and rows[1][1] == "10" and rows[2][2] == "2"
    assert float(rows[2][3]) > float(rows[1][3]) > 0  # MAFs spent grow task by task
    summary = json.loads((out / "summary.json").read_text())
    for row, point in zip(rows, summary["trajectory"]):
        assert [float(v) for v in row[4:]] == pytest.approx([point[k] for k in ("a_ka", "a_zs", "gm")], abs=0.006)
    assert f"results: {out}" in text and "summary.json" in text


def test_the_run_line_names_merge_axes_set_by_hand_without_a_preset():
    from io import StringIO

    from fif.cli.run import TablePrinter

    out = StringIO()
    event = {"event": "run_start", "tasks": 6, "method": "finetune", "step_gflops": 1.0, "mafs_per_step": 1e9,
             "budget_total_mafs": 1e12, "device": "cpu", "precision": "fp32",
             "merge": {"preset": "none", "init": "ema", "deploy": "last"}}
    TablePrinter(out)(event)
    assert "6 tasks, method finetune + merge (init ema, deploy last)" in out.getvalue()


def test_print_config_is_the_resolved_yaml_and_runs_nothing(tmp_path, capsys):
    assert main(["run", "--print-config", "--preset", "mini", "--out", str(tmp_path / "x"), "train.lr=1e-3"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["train"]["lr"] == 1e-3 and cfg["merge"]["preset"] == "ema_merge"
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("command", ["run", "pretrain", "budget", "schedule", "data", "stream", "eval", "report", "merge",
                                     "sweep"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: fif " + command in capsys.readouterr().out


def test_default_run_folder_names_benchmark_method_and_merge_recipe(tmp_path):
    import fif
    from fif.runner.setup import default_out_dir

    recipe = default_out_dir(fif.load_config("mini"), tmp_path)
    assert recipe.parent == tmp_path and recipe.name.endswith("-mini-finetune-ema_merge")
    assert default_out_dir(fif.load_config("mini", ["merge.preset=none"]), tmp_path).name.endswith("-mini-finetune")


def test_the_run_header_says_when_steps_are_priced_as_the_paper_did():
    import io

    from fif.cli.run import TablePrinter

    start = {"event": "run_start", "tasks": 2, "method": "ewc", "step_gflops": 1.0, "mafs_per_step": 1e9,
             "budget_total_mafs": 1e10, "device": "cpu", "precision": "fp32"}  # fmt: skip
    for accounting, shown in (("paper", True), ("exact", False), (None, False)):  # None: logs of older runs
        out = io.StringIO()
        TablePrinter(out)({**start, **({"accounting": accounting} if accounting else {})})
        assert ("(paper accounting)" in out.getvalue()) == shown
