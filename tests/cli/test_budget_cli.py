"""`fif budget` through its own argparse wiring: JSON fields, the text table, bad input."""

from __future__ import annotations

import argparse
import json

import pytest

from fif.cli import CliError
from fif.cli import budget as budget_cli


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fif")
    budget_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


MINI = ["budget", "--arch", "fif-mini-rn32", "--batch-size", "16"]


def test_json_rows_have_exactly_the_documented_fields(capsys):
    assert run([*MINI, "--methods", "finetune,bitfit,lnfit", "--tasks", "20,200", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert (table["arch"], table["batch_size"], table["memory_source"]) == ("fif-mini-rn32", 16, "estimate")
    assert [r["method"] for r in table["rows"]] == ["finetune", "bitfit", "lnfit"]
    for row in table["rows"]:
        assert set(row) == {
            "method", "accounting", "trainable_params", "gflops_per_step", "peak_memory_gib", "memory_multiplier",
            "mafs_per_step", "steps_per_task",
        }
        assert row["accounting"] == "exact" and row["trainable_params"] > 0
        assert set(row["steps_per_task"]) == {"20", "200"}
    ft = table["rows"][0]
    assert ft["memory_multiplier"] == 1.0 and ft["steps_per_task"] == {"20": 1420, "200": 142}
    assert ft["mafs_per_step"] == pytest.approx(ft["gflops_per_step"] * 1e9)
    assert table["budget_mafs"] == pytest.approx(28_400 * ft["mafs_per_step"])
    assert table["accounting"] == "exact"
    assert 2.9 < table["finetune_flops_over_forward"] <= 3.0
    assert all(r["steps_per_task"]["20"] > 1420 for r in table["rows"][1:])  # cheaper methods get more steps


def test_text_table_and_absolute_budget(capsys):
    assert run([*MINI, "--methods", "locked_image", "--tasks", "10", "--mafs", "1e15"]) == 0
    text = capsys.readouterr().out
    assert "fif-mini-rn32 @ batch 16; budget 1e+15 MAFs" in text
    lines = text.splitlines()
    assert lines[1].split() == ["method", "GFLOPs/step", "peak", "GiB", "mem", "×", "GMAFs/step", "T=10"]
    assert [line.split()[0] for line in lines[3:-2]] == ["locked_image"]  # the reference is measured, not shown


def test_bad_input_names_the_problem():
    with pytest.raises(KeyError, match="did you mean .?bitfit"):
        run([*MINI, "--methods", "bitfti"])
    with pytest.raises(CliError, match="--tasks"):
        run([*MINI, "--tasks", "twenty"])
    with pytest.raises(CliError, match="--batch-size"):
        run([*MINI, "--batch-size", "0"])
    with pytest.raises(CliError, match="ViT-B-99"):
        run(["budget", "--arch", "ViT-B-99"])


# FiF's Tab. 4 (facts file §9): GFLOPs/step and steps per task at T = 20 (ViT-B/16, batch 512)
TAB4 = {"finetune": (63_394.76, 1420), "bitfit": (43_165.60, 3179), "ewc": (6_276_081, 14), "si": (63_477.17, 1418),
        "lora": (54_479.25, 1898)}


@pytest.mark.slow
def test_paper_accounting_reproduces_tab4_flops_on_vit_b_16(capsys):
    """Runs on the meta device (no weights): about 20 s on one core."""
    argv = ["budget", "--arch", "ViT-B-16", "--batch-size", "512", "--methods", "finetune,lora,ewc,si,bitfit",
            "--tasks", "20", "--accounting", "paper", "--json"]  # fmt: skip
    assert run(argv) == 0
    table = json.loads(capsys.readouterr().out)
    rows = {r["method"]: r for r in table["rows"]}
    assert table["accounting"] == "paper" and all(r["accounting"] == "paper" for r in rows.values())
    assert rows["finetune"]["gflops_per_step"] == pytest.approx(TAB4["finetune"][0], rel=1e-5)  # was −0.64%
    assert rows["bitfit"]["gflops_per_step"] == pytest.approx(TAB4["bitfit"][0], rel=1e-5)
    assert rows["ewc"]["gflops_per_step"] == pytest.approx(TAB4["ewc"][0], rel=1e-5)  # 99 steps' FLOPs per step
    assert rows["si"]["gflops_per_step"] == pytest.approx(TAB4["si"][0], rel=0.01)
    assert rows["lora"]["gflops_per_step"] == pytest.approx(TAB4["lora"][0], rel=1e-5)  # the reference's merged LoRA
    assert rows["ewc"]["steps_per_task"]["20"] == TAB4["ewc"][1]
    assert rows["finetune"]["steps_per_task"]["20"] == TAB4["finetune"][1]
    assert rows["bitfit"]["trainable_params"] == 171_008


def test_paper_accounting_charges_ewcs_pass_per_step_on_the_mini_model(capsys):
    assert run([*MINI, "--methods", "finetune,ewc", "--tasks", "20", "--accounting", "paper", "--json"]) == 0
    paper = {r["method"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert run([*MINI, "--methods", "finetune,ewc", "--tasks", "20", "--json"]) == 0
    exact = {r["method"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    # FiF's 50,000 Fisher samples at the training batch of 16: ceil(50000/16) = 3125 more steps' FLOPs per step
    assert paper["ewc"]["gflops_per_step"] == pytest.approx(3126 * paper["finetune"]["gflops_per_step"], rel=1e-9)
    assert exact["ewc"]["gflops_per_step"] == pytest.approx(exact["finetune"]["gflops_per_step"], rel=1e-9)
    assert paper["ewc"]["steps_per_task"]["20"] == 0 < exact["ewc"]["steps_per_task"]["20"]
