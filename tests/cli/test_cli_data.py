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


def test_show_fif_all_lists_every_dataset_with_the_papers_primer_without_data(capsys):
    import json

    from fif.data.fif_catalogue import CATALOGUE

    assert main(["data", "show", "fif", "--all", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 63 and [r["name"] for r in rows] == [d.name for d in CATALOGUE]
    by = {r["name"]: r for r in rows}
    assert by["CIFAR100"]["primer"] == "A photo of a {}." and by["FSCOCO"]["primer"] == "A sketch of a {}"
    assert by["MTSD"] == {**by["MTSD"], "folder": "MTSD", "role": "adaptation", "kind": "classification",
                          "splits": {"train": "train", "test": "val"}}
    assert by["FLICKR30K"]["kind"] == "retrieval" and by["FLICKR30K"]["splits"] == {"test": "test"}
    assert main(["data", "show", "fif", "--all", "--datasets", "svhn,MNIST"]) == 0
    text = capsys.readouterr().out
    assert 'A photo of the number: "{}".' in text and "CUB200" not in text


def test_check_exits_nonzero_on_what_a_run_would_fail_on(tmp_path, capsys):
    import json

    from fif_reference import class_names, write_dataset

    root = tmp_path / "data"
    write_dataset(root, "DTD", class_names("texture", 2), {"train": 2, "test": 1})
    base = ["data", "check", f"data.root={root}", "data.options={datasets: [DTD, CUB200]}", "data.mixture.pretraining=0",
            "data.mixture.update=0.5", "data.mixture.buffer=0.5", "--decode", "2"]
    assert main(base) == 1  # CUB200 is missing and data.options.missing=error
    text = capsys.readouterr().out
    assert "CUB200: error: missing folder" in text and "not ok" in text
    assert main([*base[:3], "data.options={datasets: [DTD, CUB200], missing: skip}", *base[4:], "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and [d["name"] for d in report["datasets"]] == ["CUB200", "DTD"]
    assert report["datasets"][1]["splits"][0] == {"split": "train", "file": str(root / "DTD_train.json"), "size": 4,
                                                  "own_captions": 4, "decoded": 2, "unreadable": []}
