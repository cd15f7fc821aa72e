"""`fif stream build|show` through its own argparse wiring, on a small mini benchmark."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from fif.cli import CliError
from fif.cli import stream as stream_cli
from fif.data.stream import read_stream

SMALL = "data.options={pool_size: 200, train_per_class: 3, test_per_class: 2, eval_size: 20, retrieval_train: 10, retrieval_test: 10}"
TWO = "stream.datasets=[mini_digits,mini_relations,mini_scenes]"  # 10 + 4 + 1 concepts


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fif")
    stream_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_build_then_show_the_file(tmp_path, capsys):
    out = tmp_path / "stream.json"
    assert run(["stream", "build", SMALL, TWO, "stream.ordering=time", "--out", str(out)]) == 0
    concepts = read_stream(out)
    assert len(concepts) == 15 and concepts[0] == "mini_digits+++0" and concepts[-1] == "mini_scenes+++*"
    assert "wrote 15 concepts of 3 datasets (ordering time, seed 0)" in capsys.readouterr().out

    png = tmp_path / "stream.png"
    assert run(["stream", "show", str(out), SMALL, "stream.tasks=4", "--png", str(png)]) == 0
    text = capsys.readouterr().out
    assert "15 concepts of 3 datasets, 52 training samples, 4 tasks" in text  # 14 classes × 3 + 10 pairs
    rows = [r for r in map(str.split, text.splitlines()) if len(r) > 2 and r[0].isdigit() and r[1].isdigit()]
    assert [r[1] for r in rows] == ["4", "4", "4", "3"]  # FiF chunking: 15 = 4 + 4 + 4 + 3
    assert rows[-1][-4:] == ["mini_relations", "2,", "mini_scenes", "1"]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_show_json_and_reference_points(capsys):
    assert run(["stream", "show", SMALL, TWO, "stream.ordering=dataset", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [t["concepts"] for t in shown["tasks"]] == [{"mini_digits": 10}, {"mini_relations": 4}, {"mini_scenes": 1}]
    assert [t["samples"] for t in shown["tasks"]] == [{"mini_digits": 30}, {"mini_relations": 12}, {"mini_scenes": 10}]

    assert run(["stream", "show", SMALL, TWO, "stream.reference=oracle"]) == 0
    assert "oracle: the whole stream as one task" in capsys.readouterr().out
    assert run(["stream", "show", SMALL, TWO, "stream.reference=zeroshot"]) == 0
    assert "no tasks" in capsys.readouterr().out


def test_show_rejects_two_files(tmp_path):
    with pytest.raises(CliError, match="at most one stream file"):
        run(["stream", "show", "a.json", "b.json"])


def test_build_a_model_ordering_with_a_random_init_model(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add hand-off cost
    try:
        out = tmp_path / "sim.json"
        argv = ["stream", "build", SMALL, TWO, "model.pretrained=null", "stream.ordering=similarity", "--out", str(out)]
        assert run(argv) == 0
        assert run([*argv[:-1], str(tmp_path / "again.json")]) == 0
    finally:
        torch.set_num_threads(before)
    concepts = read_stream(out)
    assert concepts == read_stream(tmp_path / "again.json")  # the random init is seeded by run.seed
    assert len(concepts) == 15 and "mini_scenes+++*" in concepts


def test_build_help_lists_every_ordering_and_its_options(capsys):
    from fif.data.stream import ORDERINGS

    with pytest.raises(SystemExit):
        run(["stream", "build", "--help"])
    text = capsys.readouterr().out
    for name in ORDERINGS:
        assert f"\n  {name}: " in text, name
    for key in ("stream.interleave", "stream.period_years", "stream.corpus", "stream.start", "stream.difficulty_split",
                "stream.difficulty_samples", "stream.file", "stream.reverse", "run.seed"):
        assert key in text, key


def test_show_concepts_prints_each_tasks_concepts_and_what_they_were_ordered_by(capsys):
    assert run(["stream", "show", SMALL, TWO, "stream.ordering=time", "stream.tasks=2", "--concepts"]) == 0
    text = capsys.readouterr().out
    assert "concepts per task, each with its release year:" in text
    lines = text.splitlines()
    first = lines.index("task 1:")
    from fif.data.registry import get_benchmark

    year = {n: str(get_benchmark("mini").spec(n).release_year) for n in ("mini_digits", "mini_scenes")}
    assert lines[first + 1].split() == ["mini_digits+++0", year["mini_digits"]]
    assert lines[-1].split() == ["mini_scenes+++*", year["mini_scenes"]]
    assert run(["stream", "show", SMALL, TWO, "stream.ordering=random", "stream.tasks=2", "--concepts", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["tasks"]
    assert sum(len(r["concept_list"]) for r in rows) == 15 and "scores" not in rows[0]
