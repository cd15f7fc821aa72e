"""`fif update` prints what the library records: init, a dry run, apply, log, diff, show, export, rollback, plan."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from fif.cli import main
from lineage_world import RECIPE, materialize_world

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    materialize_world(root / "mat")
    assert main(["update", "init", "--out", str(root / "acme"), "--recipe", "mini", *RECIPE,
                 "model.pretrained=null"]) == 0
    return root


def test_a_lineage_through_the_cli(lineage, capsys):
    acme, mat = str(lineage / "acme"), lineage / "mat"
    capsys.readouterr()
    assert main(["update", "apply", acme, "--data", str(mat / "mini_digits"), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "v1.1 (update 1, from v1.0)" in plan and "-> 6 steps at batch 8" in plan
    assert "per batch: pretraining 4, update 4, buffer 0" in plan
    assert not (lineage / "acme" / "versions" / "v1.1").exists()
    assert main(["update", "apply", acme, "--data", str(mat / "mini_digits"), "--no-progress"]) == 0
    assert "released v1.1 (deployed)" in capsys.readouterr().out
    assert main(["update", "apply", acme, "--data", str(mat / "mini_letters"), "--dry-run", "--budget", "12"]) == 0
    assert "buffer: mini_digits" in (out := capsys.readouterr().out) and "-> 12 steps" in out
    letters = json.loads((mat / "mini_letters_classnames.json").read_text())
    assert main(["update", "apply", acme, "--data", str(mat / "mini_letters"), "--dry-run",
                 "--concepts", f"{letters[1]},{letters[0]}"]) == 0
    assert f"as mini_letters, 2 classes: {letters[0]}, {letters[1]}" in capsys.readouterr().out
    assert main(["update", "log", acme]) == 0
    log = capsys.readouterr().out.splitlines()
    assert log[0].startswith("A_KA and GM on 1 update sets (mini_digits)") and "so far" in log[1]
    assert log[2].startswith("v1.0 ") and log[3].startswith("v1.1*") and "mini_digits" in log[3]
    assert main(["update", "eval", acme, "--versions", "v1.0,v1.1"]) == 0
    assert "nothing to score" in capsys.readouterr().out
    assert main(["update", "diff", acme, "v1.0", "v1.1"]) == 0
    assert "mini_colors" in capsys.readouterr().out
    assert main(["update", "show", acme]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == "v1.1" and shown["chain"] == ["v1.1"] and shown["gate"]["passed"]
    out = lineage / "v11.safetensors"
    assert main(["update", "export", acme, "v1.1", "-o", str(out)]) == 0
    assert load_file(str(out)).keys() == load_file(str(lineage / "acme/versions/v1.1/model.safetensors")).keys()
    assert main(["update", "plan", acme]) == 0
    assert "next: a minor update" in capsys.readouterr().out
    assert main(["update", "rollback", acme, "--reason", "bad day"]) == 0
    assert capsys.readouterr().out.strip() == "deployed: v1.0"
    assert main(["update", "rollback", acme]) == 2
    assert "nothing to roll back to" in capsys.readouterr().err
    assert main(["update", "promote", acme, "v1.1", "--reason", "x"]) == 2
    assert "not a held candidate" in capsys.readouterr().err
    # an update from v1.0 (rolled back to): the apply scores the other versions on its data, and itself on the
    # data of the other branch (v1.1's), and says so
    assert main(["update", "apply", acme, "--data", str(mat / "mini_letters"), "--no-progress"]) in (0, 3)
    filled = [line.split() for line in capsys.readouterr().out.splitlines() if "score table:" in line]
    assert [(f[2], f[4]) for f in filled] == [("v1.0", "mini_letters"), ("v1.1", "mini_letters"),
                                              ("v1.2", "mini_digits")]


def test_bad_input_is_one_line(lineage, capsys):
    acme = str(lineage / "acme")
    assert main(["update", "apply", acme, "--data", "mini:mini_digits", "method.name=lora"]) == 2
    assert "method.name: an update cannot change it" in capsys.readouterr().err
    assert main(["update", "apply", acme, "--data", str(lineage / "mat/mini_digits"), "--concepts", "zebra"]) == 2
    assert "--concepts: 'zebra' is not a class of" in capsys.readouterr().err
    assert main(["update", "show", str(lineage / "nope")]) == 2
    assert "is not a lineage folder" in capsys.readouterr().err
    assert main(["update", "init", "--out", acme]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["update", "init", "--out", str(lineage / "x"), "update.max_drop=1"]) == 2
    assert "did you mean 'update.max_zs_drop'" in capsys.readouterr().err
    assert main(["update", "init", "--out", str(lineage / "x"), "update.max_dataset_drop=lots"]) == 2
    assert "update.max_dataset_drop='lots': give a number of points" in capsys.readouterr().err
    assert main(["update", "eval", acme, "--versions", "v1.7"]) == 2
    assert "unknown version 'v1.7'" in capsys.readouterr().err
