"""User benchmarks from YAML: every source, inferred class names and sources, the pool, and every
problem of a file reported at once."""

from __future__ import annotations

import json

import pytest
import yaml
from PIL import Image

from fif.data.mini import build_mini
from fif.data.registry import get_benchmark
from fif.data.sources.common import SourceError
from fif.data.sources.fif_layout import write_split
from fif.data.sources.wds import write_shards
from fif.data.user_benchmark import load_benchmark_yaml


def png(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (10, 10), colour).save(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder with one dataset per source, and the YAML describing them."""
    root = tmp_path_factory.mktemp("user")
    for split in ("train", "test"):
        for cls, colour in (("robin", (200, 0, 0)), ("wren", (0, 0, 200))):
            for i in range(2):
                png(root / "birds" / split / cls / f"{i}.png", colour)
    png(root / "scans" / "a.png", (9, 9, 9))
    png(root / "scans" / "b.png", (99, 99, 99))
    (root / "scans" / "train.csv").write_text("image,caption,label\na.png,a scan,benign\nb.png,,malignant\n")
    (root / "scans" / "test.jsonl").write_text('{"image": "b.png", "caption": "scan b", "label": "malignant"}\n'
                                               '{"image": "a.png", "label": "benign"}\n')
    mini = build_mini(pool_size=12, eval_size=12, retrieval_test=6)
    write_split(mini.load("mini_colors", "test"), root / "colors")
    write_shards(mini.load("mini_pretrain", "train"), root / "shards", samples_per_shard=5, image_size=16)
    spec = {
        "name": "mine",
        "datasets": [
            {"name": "birds", "primer": "A photo of a {}, a type of bird.", "release_year": 2011,
             "location": "birds"},  # source inferred (folder), split subfolders found
            {"name": "scans", "source": "manifest", "primer": "A scan of a {} lesion.",
             "splits": {"train": "scans/train.csv", "test": "scans/test.jsonl"}},
            {"name": "colors", "role": "eval_only", "location": "colors"},  # inferred: fif layout
            {"name": "web", "role": "pretraining", "location": "shards/{00000..00002}.tar"},  # inferred: wds
        ],
    }
    path = root / "bench.yaml"
    path.write_text(yaml.safe_dump(spec))
    return root, path, mini


def test_every_source_loads(world):
    root, path, mini = world
    bench = get_benchmark(str(path))
    assert bench.name == "mine" and bench.pretraining_pool == "web"
    assert {n: s.source for n, s in bench.datasets.items()} == {
        "birds": "folder", "scans": "manifest", "colors": "fif", "web": "wds"}
    birds = bench.spec("birds")
    assert birds.classnames == ("robin", "wren") and birds.role == "adaptation" and birds.release_year == 2011
    train = bench.load("birds", "train")
    assert len(train) == 4 and train.targets.tolist() == [0, 0, 1, 1]
    assert list(train.captions(0)) == ["A photo of a robin, a type of bird."]
    assert bench.spec("scans").classnames == ("benign", "malignant")
    assert bench.load("scans", "test").targets.tolist() == [1, 0]
    assert list(bench.load("scans", "test").captions(1)) == ["A scan of a benign lesion."]
    assert bench.spec("colors").classnames == mini.spec("mini_colors").classnames
    assert len(bench.load("colors", "test")) == len(mini.load("mini_colors", "test"))
    web = bench.load("web", "train")
    assert len(web) == 12 and list(web.captions(7)) == list(mini.load("mini_pretrain", "train").captions(7))
    assert web.images([0, 11], 16).shape == (2, 3, 16, 16)


def test_options_root_and_subset(world, tmp_path):
    root, path, _ = world
    moved = tmp_path / "elsewhere.yaml"
    moved.write_text(path.read_text())
    bench = load_benchmark_yaml(moved, root=root, datasets=["birds"])
    assert list(bench.datasets) == ["birds"] and bench.pretraining_pool is None
    with pytest.raises(ValueError, match="did you mean 'datasets'"):
        get_benchmark(str(path), dataset=["birds"])


def test_classnames_file_with_a_mapping(world, tmp_path):
    root, _, _ = world
    (tmp_path / "names.json").write_text(json.dumps({"robin": "American robin", "wren": "house wren"}))
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"root": str(root), "datasets": [
        {"name": "birds", "location": "birds/{split}", "classnames": str(tmp_path / "names.json")}]}))
    bench = load_benchmark_yaml(path)
    assert bench.spec("birds").classnames == ("American robin", "house wren")
    assert list(bench.load("birds", "test").captions(3)) == ["A photo of a house wren."]


def test_adaptation_data_needs_separate_splits(world, tmp_path):
    root, _, _ = world
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"root": str(root), "datasets": [
        {"name": "train_only", "location": "birds/train"}]}))
    with pytest.raises(SourceError, match="'train_only': an adaptation dataset needs separate train and test data"):
        load_benchmark_yaml(path)
    path.write_text(yaml.safe_dump({"root": str(root), "datasets": [  # class names given: fails on load instead
        {"name": "train_only", "location": "birds/train", "classnames": str(tmp_path / "names.txt")}]}))
    (tmp_path / "names.txt").write_text("robin\nwren\n")
    with pytest.raises(SourceError, match="needs separate train and test data"):
        load_benchmark_yaml(path).load("train_only", "train")
    path.write_text(yaml.safe_dump({"root": str(root), "datasets": [
        {"name": "held_out", "role": "eval_only", "location": "birds/test"}]}))
    assert len(load_benchmark_yaml(path).load("held_out", "test")) == 4


def test_every_problem_is_reported_at_once(world, tmp_path):
    root, _, _ = world
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"pol": "x", "root": str(root), "datasets": [
        {"name": "a", "kind": "classifcation", "location": "birds/{split}"},
        {"name": "b", "primr": "x {}", "location": "birds/{split}"},
        {"location": "birds/{split}"},
        {"name": "c", "source": "parquet", "location": "x"},
        {"name": "d", "source": "manifest", "location": "scans/{split}.csv", "options": {"image_col": "x"}},
        {"name": "e", "release_year": "2020", "location": "birds/{split}"},
        {"name": "f", "location": "birds/{split}", "classnames": "missing.json"},
        {"name": "f", "location": "birds/{split}"},
        "not a mapping",
    ]}))
    with pytest.raises(SourceError) as err:
        load_benchmark_yaml(path)
    msg = str(err.value)
    for expected in ("unknown key 'pol'; did you mean 'pool'?", "kind 'classifcation' must be one of",
                     "unknown key 'primr'; did you mean 'primer'?", "datasets[2]: 'name' is required",
                     "unknown source 'parquet'", "unknown option 'image_col' for source 'manifest'",
                     "release_year must be an integer", "missing.json: class-names file not found",
                     "'f' is used twice", "datasets[8]: expected a mapping"):
        assert expected in msg, expected
    assert "bad.yaml: 10 problem(s)" in msg


def test_file_errors(tmp_path):
    with pytest.raises(SourceError, match="benchmark file not found"):
        get_benchmark(str(tmp_path / "none.yaml"))
    (tmp_path / "b.yaml").write_text("datasets: [unclosed")
    with pytest.raises(SourceError, match="not valid YAML"):
        get_benchmark(str(tmp_path / "b.yaml"))
    (tmp_path / "b.yaml").write_text("datasets: []")
    with pytest.raises(SourceError, match="'datasets' must be a non-empty list"):
        get_benchmark(str(tmp_path / "b.yaml"))
    with pytest.raises(KeyError, match="or the path of a benchmark YAML file"):
        get_benchmark("minii")


def test_pool_must_be_a_pretraining_dataset(world, tmp_path):
    root, _, _ = world
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"root": str(root), "pool": "birds", "datasets": [
        {"name": "birds", "location": "birds/{split}"}]}))
    with pytest.raises(SourceError, match="role: pretraining"):
        load_benchmark_yaml(path)


def test_a_dataset_of_another_benchmark(tmp_path):
    """``source: benchmark`` takes a dataset of a registered benchmark (or YAML) under this benchmark's name and role."""
    path = tmp_path / "b.yaml"
    opts = {"pool_size": 50, "train_per_class": 2, "test_per_class": 1, "eval_size": 12}
    path.write_text(yaml.safe_dump({"datasets": [
        {"name": "guard", "role": "eval_only", "kind": "classification", "source": "benchmark",
         "location": "mini:mini_colors", "options": {"options": opts}},
        {"name": "pool", "role": "pretraining", "source": "benchmark", "location": "mini:mini_pretrain",
         "options": {"options": opts}},
    ]}))
    bench = get_benchmark(str(path))
    mini = get_benchmark("mini", **opts)
    assert bench.spec("guard").classnames == mini.spec("mini_colors").classnames
    assert bench.pretraining_pool == "pool" and len(bench.load("pool", "train")) == 50
    split = bench.load("guard", "test")
    assert split.spec.name == "guard" and split.spec.role == "eval_only"
    assert (split.pixels == mini.load("mini_colors", "test").pixels).all()
    path.write_text(yaml.safe_dump({"datasets": [{"name": "x", "source": "benchmark", "location": "mini:nope"}]}))
    with pytest.raises(SourceError, match="unknown dataset 'nope'"):
        get_benchmark(str(path))
    path.write_text(yaml.safe_dump({"datasets": [{"name": "x", "source": "benchmark", "location": "mini"}]}))
    with pytest.raises(SourceError, match="must be BENCHMARK:DATASET"):
        get_benchmark(str(path))


def test_classes_keeps_some_classes_of_a_dataset(world, tmp_path):
    """``classes:`` keeps the samples of some classes (a concept subset), renumbered in the source's class order."""
    root, _, _ = world
    opts = {"pool_size": 50, "train_per_class": 2, "test_per_class": 1, "eval_size": 12}
    digits = get_benchmark("mini", **opts).spec("mini_digits").classnames
    chosen = [digits[3], digits[1]]
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"root": str(root), "datasets": [
        {"name": "wrens", "location": "birds", "classes": ["wren"]},
        {"name": "some_digits", "source": "benchmark", "location": "mini:mini_digits", "classes": chosen,
         "options": {"options": opts}},
    ]}))
    bench = get_benchmark(str(path))
    assert bench.spec("wrens").classnames == ("wren",)
    wrens, birds = bench.load("wrens", "train"), get_benchmark(str(root / "bench.yaml")).load("birds", "train")
    assert len(wrens) == 2 and wrens.targets.tolist() == [0, 0]
    assert list(wrens.captions(1)) == ["A photo of a wren."]
    assert (wrens.images([0, 1], 8) == birds.images([2, 3], 8)).all()  # the wren images, in order
    assert bench.spec("some_digits").classnames == (digits[1], digits[3])  # the source's order, not the list's
    some, whole = bench.load("some_digits", "test"), get_benchmark("mini", **opts).load("mini_digits", "test")
    keep = [i for i, t in enumerate(whole.targets) if t in (1, 3)]
    assert (some.pixels == whole.pixels[keep]).all() and some.targets.tolist() == [0 if t == 1 else 1 for t in whole.targets[keep]]
    path.write_text(yaml.safe_dump({"root": str(root), "datasets": [
        {"name": "wrens", "location": "birds", "classes": ["wern"]}]}))
    with pytest.raises(SourceError, match="unknown class \\(classes:\\) 'wern' in its 2 classes; did you mean 'wren'"):
        get_benchmark(str(path))


def test_an_unreadable_image_in_a_class_subset_is_replaced_within_it(tmp_path):
    colours = {}
    for c, cls in enumerate(("finch", "robin", "wren")):  # train: finch 0-1, robin 2-3, wren 4-5
        for i in range(2):
            colours[cls, i] = (40 + 100 * c, 60 * i, 30)
            for split in ("train", "test"):
                png(tmp_path / "birds" / split / cls / f"{i}.png", colours[cls, i])
    (tmp_path / "birds/train/robin/1.png").write_bytes(b"not a png")  # sample 3 of the whole set, 1 of the subset
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"datasets": [{"name": "two", "location": "birds", "classes": ["robin", "wren"]}]}))
    bench = get_benchmark(str(path))
    images = bench.load("two", "train").images([0, 1, 2, 3], 8)
    red = [round(float(x) * 255) for x in images[:, 0, 0, 0]]
    # robin 0 stands in for robin 1; wren 1 (subset 3, the whole set's 3) is itself, not taken for the bad one
    assert red == [colours["robin", 0][0]] * 2 + [colours["wren", 0][0], colours["wren", 1][0]]
    assert (images[3] != images[2]).any()
    assert [f for _, f in bench.bad_samples()] == [str(tmp_path / "birds/train/robin/1.png")]
