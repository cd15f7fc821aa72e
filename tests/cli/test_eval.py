"""`fif eval` on a weights file, a run folder and a base model; `fif report` on the fixture run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from fif.cli import CliError
from fif.cli import eval as eval_cli
from fif.cli import report as report_cli
from fif.config import dump_yaml, load_config

FIXTURE = Path(__file__).parent.parent / "fixtures" / "run_small"
# Overrides right after TARGET: argparse takes positionals as one group.
OVERRIDES = ["eval.min_samples=20", "eval.subset_frac=0.05", "eval.batch_size=64", "run.device=cpu"]
FLAGS = ["--datasets", "mini_digits,mini_colors", "--subset"]


def run(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fif")
    module.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    from fif.model.clip import build_clip

    torch.manual_seed(0)
    clip = build_clip("fif-mini-rn32")
    path = tmp_path_factory.mktemp("w") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, str(path), metadata={"arch": "fif-mini-rn32"})
    return path


def scores_of(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_eval_weights_file_json(weights, capsys):
    assert run(eval_cli, ["eval", str(weights), *OVERRIDES, *FLAGS, "--json"]) == 0
    out = scores_of(capsys)
    assert out["arch"] == "fif-mini-rn32" and out["weights"] == "weights file" and out["subset"] is True
    by_name = {d["dataset"]: d for d in out["datasets"]}
    assert set(by_name) == {"mini_digits", "mini_colors"} and by_name["mini_digits"]["samples"] == 30
    assert {"top1", "top5"} <= set(by_name["mini_digits"]["metrics"])
    assert out["a_ka"] == by_name["mini_digits"]["score"] and out["a_zs"] == by_name["mini_colors"]["score"]


def test_eval_run_folder_matches_weights_file(weights, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = load_config("mini", ["model.pretrained=null"])
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    (run_dir / "final.safetensors").write_bytes(weights.read_bytes())
    assert run(eval_cli, ["eval", str(run_dir), *OVERRIDES, *FLAGS, "--json"]) == 0
    from_run = scores_of(capsys)
    assert run(eval_cli, ["eval", str(weights), *OVERRIDES, *FLAGS, "--json"]) == 0
    from_file = scores_of(capsys)
    assert from_run["weights"] == "final weights"
    assert [d["score"] for d in from_run["datasets"]] == [d["score"] for d in from_file["datasets"]]


def test_eval_base_model_table(capsys):
    assert run(eval_cli, ["eval", "model.pretrained=null", *OVERRIDES, "--arch", "fif-mini-rn32", *FLAGS]) == 0
    text = capsys.readouterr().out
    assert "mini_digits" in text and "A_KA" in text and "base model" in text


def test_eval_errors(tmp_path):
    with pytest.raises(CliError, match="neither a run folder nor a weights file"):
        run(eval_cli, ["eval", str(tmp_path / "nope")])
    (tmp_path / "config.yaml").write_text("run:\n  seed: 0\n")
    with pytest.raises(CliError, match="final.safetensors"):
        run(eval_cli, ["eval", str(tmp_path)])
    with pytest.raises(KeyError, match="mini_digit"):
        run(eval_cli, ["eval", "--arch", "fif-mini-rn32", "model.pretrained=null", "--datasets", "mini_digitz"])


def test_report_cli(tmp_path, capsys):
    assert run(report_cli, ["report", str(FIXTURE), "--out", str(tmp_path / "r")]) == 0
    text = capsys.readouterr().out
    assert "run_small" in text and "53.33" in text and "report.html" in text
    assert (tmp_path / "r" / "report.html").is_file() and (tmp_path / "r" / "trajectory.png").is_file()
    assert run(report_cli, ["report", str(FIXTURE), "--out", str(tmp_path / "j"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"][0]["mean_forgetting"] == 10.0
    with pytest.raises(CliError, match="--out"):
        run(report_cli, ["report", str(FIXTURE), str(FIXTURE)])
    with pytest.raises(CliError, match="no events.jsonl"):
        run(report_cli, ["report", str(tmp_path)])


TINY_VIT = {  # a tiny ViT CLIP at the mini benchmark's 32 px: an architecture other than the preset's
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture
def plain_vit(tmp_path, monkeypatch) -> Path:
    """A plain open_clip state dict (no fif metadata) of an architecture registered for this test only."""
    from open_clip import factory
    from safetensors.torch import save_file

    from fif.model.clip import build_clip

    monkeypatch.setitem(factory._MODEL_CONFIGS, "fif-test-eval-vit", TINY_VIT)
    torch.manual_seed(0)
    state = build_clip("fif-test-eval-vit").model.state_dict()
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_eval_plain_state_dict_infers_its_arch_with_overrides_anywhere(plain_vit, capsys):
    from fif.cli import main

    # Overrides before and after the flags: argparse alone takes only the first run of positionals.
    assert main(["eval", str(plain_vit), OVERRIDES[0], *FLAGS, "--json", *OVERRIDES[1:]]) == 0
    out = scores_of(capsys)
    assert out["arch"] == "fif-test-eval-vit" and out["weights"] == "weights file"  # not the mini preset's fif-mini-rn32
    assert {d["dataset"] for d in out["datasets"]} == {"mini_digits", "mini_colors"}
    with pytest.raises(SystemExit):
        main(["eval", str(plain_vit), "--json", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_eval_asks_for_the_arch_when_several_fit(plain_vit, monkeypatch, capsys):
    from open_clip import factory

    from fif.cli import main

    monkeypatch.setitem(factory._MODEL_CONFIGS, "fif-test-eval-vit-quickgelu", {**TINY_VIT, "quick_gelu": True})
    assert main(["eval", str(plain_vit), *OVERRIDES, *FLAGS, "--json"]) == 2
    err = capsys.readouterr().err
    assert "fit 2 architectures: fif-test-eval-vit, fif-test-eval-vit-quickgelu" in err and "--arch NAME" in err
    assert main(["eval", str(plain_vit), *OVERRIDES, *FLAGS, "--json", "--arch", "fif-test-eval-vit-quickgelu"]) == 0
    assert scores_of(capsys)["arch"] == "fif-test-eval-vit-quickgelu"
