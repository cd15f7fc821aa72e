"""--data SOURCE: each accepted form becomes a dataset entry with a content hash; verify() catches a changed,
missing or added file and names the version."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from fif.data.registry import get_benchmark
from fif.data.show import materialize
from fif.update.sources import LineageDataError, UpdateData, resolve_source, verify
from lineage_world import OPTS


def png(path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


@pytest.fixture
def tree(tmp_path):
    for split in ("train", "test"):
        for i, cls in enumerate(("cat", "dog")):
            png(tmp_path / "pets" / split / cls / "a.png", 40 * i)
    return tmp_path / "pets"


def test_class_folder_tree(tree):
    data = resolve_source(str(tree), set(), "mini", {})
    assert data.entry["source"] == "folder" and data.name == "pets" and len(data.files) == 4
    bench = get_benchmark_of(tree.parent, data)
    assert bench.spec("pets").classnames == ("cat", "dog") and len(bench.load("pets", "train")) == 2


def get_benchmark_of(where, data: UpdateData):
    path = where / "b.yaml"
    path.write_text(json.dumps({"datasets": [data.entry]}))
    return get_benchmark(str(path))


def test_fif_layout_from_materialize_and_benchmark_dataset(tmp_path):
    materialize(get_benchmark("mini", **OPTS), tmp_path, ["mini_digits"], ["train", "test"])
    data = resolve_source(str(tmp_path / "mini_digits"), {"x"}, "mini", OPTS)
    assert data.entry["source"] == "fif" and "mini_digits_classnames.json" in data.files
    spec = get_benchmark("mini", **OPTS).spec("mini_digits")
    assert (data.entry["primer"], data.entry["templates"]) == (spec.primer, list(spec.templates))  # saved by materialize
    direct = resolve_source("mini:mini_digits", {"mini_digits"}, "mini", OPTS)
    assert direct.name == "mini_digits_2" and direct.entry["location"] == "mini:mini_digits" and not direct.files
    assert direct.entry["options"] == {"options": OPTS}
    bench = get_benchmark_of(tmp_path, direct)
    assert bench.load("mini_digits_2", "test").spec.name == "mini_digits_2"
    verify(direct, "v1.1")
    with pytest.raises(LineageDataError, match="mini_colors is a eval_only dataset"):
        resolve_source("mini:mini_colors", set(), "mini", OPTS)
    with pytest.raises(LineageDataError, match="unknown dataset 'mini_digitz'.*mini_digits"):
        resolve_source("mini:mini_digitz", set(), "mini", OPTS)


def test_caption_manifest(tmp_path):
    for split in ("train", "test"):
        png(tmp_path / "scans" / f"{split}.png", 9)
        (tmp_path / "scans" / f"{split}.csv").write_text(f"image,caption,label\n{split}.png,a scan,lung\n")
    data = resolve_source(str(tmp_path / "scans"), set(), "mini", {})
    assert data.entry["source"] == "manifest" and data.entry["location"].endswith("{split}.csv")
    assert resolve_source(str(tmp_path / "scans" / "{split}.csv"), set(), "mini", {}).digest == data.digest


def test_unknown_source_says_what_is_accepted(tmp_path):
    with pytest.raises(LineageDataError, match="BENCHMARK:DATASET such as mini:mini_digits"):
        resolve_source(str(tmp_path / "nothing"), set(), "mini", {})
    (tmp_path / "empty").mkdir()
    with pytest.raises(LineageDataError, match="neither FiF's layout"):
        resolve_source(str(tmp_path / "empty"), set(), "mini", {})


def test_verify_names_the_version_and_file(tree):
    data = resolve_source(str(tree), set(), "mini", {})
    verify(data, "v1.1")
    moved = UpdateData.from_record(json.loads(json.dumps(data.record())))
    assert moved == data
    victim = tree / "train" / "cat" / "a.png"
    png(victim, 200)
    with pytest.raises(LineageDataError, match=r"version v1\.1: its data file .*a\.png has changed"):
        verify(data, "v1.1")
    victim.unlink()
    with pytest.raises(LineageDataError, match=r"version v1\.1: its data file .*a\.png is missing"):
        verify(data, "v1.1")
    png(victim, 0)
    verify(data, "v1.1")
    png(tree / "train" / "cat" / "b.png", 3)
    with pytest.raises(LineageDataError, match=r"version v1\.1: file .*b\.png was added"):
        verify(data, "v1.1")
    shutil.rmtree(tree)
    with pytest.raises(LineageDataError, match="is missing"):
        verify(data, "v1.1")


def test_concepts_of_a_class_folder_tree(tree):
    data = resolve_source(str(tree), set(), "mini", {}, ["dog"])
    assert data.concepts == ["dog"] and data.entry["classes"] == ["dog"]
    assert sorted(data.files) == ["test/dog/a.png", "train/dog/a.png"]  # only the chosen class's files
    assert data.digest != resolve_source(str(tree), set(), "mini", {}).digest
    bench = get_benchmark_of(tree.parent, data)
    assert bench.spec("pets").classnames == ("dog",) and len(bench.load("pets", "train")) == 1
    assert UpdateData.from_record(json.loads(json.dumps(data.record()))) == data
    png(tree / "train" / "cat" / "b.png", 3)  # another class's file comes and goes: not this update's data
    verify(data, "v1.1")
    png(tree / "train" / "dog" / "b.png", 3)
    with pytest.raises(LineageDataError, match=r"version v1\.1: file .*dog/b\.png was added .*classes dog"):
        verify(data, "v1.1")
    (tree / "train" / "dog" / "b.png").unlink()
    png(tree / "test" / "dog" / "a.png", 99)
    with pytest.raises(LineageDataError, match=r"version v1\.1: its data file .*test/dog/a\.png has changed"):
        verify(data, "v1.1")


def test_unknown_concepts_and_manifests_are_refused(tree, tmp_path):
    with pytest.raises(LineageDataError, match=r"--concepts: 'dgo' is not a class of .*pets \(did you mean 'dog'\?\); "
                                               r"its 2 classes include cat, dog"):
        resolve_source(str(tree), set(), "mini", {}, ["dgo"])
    for split in ("train", "test"):
        png(tmp_path / "scans" / f"{split}.png", 9)
        (tmp_path / "scans" / f"{split}.csv").write_text(f"image,caption,label\n{split}.png,a scan,lung\n")
    with pytest.raises(LineageDataError, match="is a caption manifest; its samples carry captions, not classes"):
        resolve_source(str(tmp_path / "scans"), set(), "mini", {}, ["lung"])


def test_concepts_of_a_materialized_folder_and_of_a_benchmark_dataset(tmp_path):
    mini = get_benchmark("mini", **OPTS)
    materialize(mini, tmp_path, ["mini_digits"], ["train", "test"])
    names = mini.spec("mini_digits").classnames
    chosen = [names[4], names[2]]
    whole = resolve_source(str(tmp_path / "mini_digits"), set(), "mini", OPTS)
    data = resolve_source(str(tmp_path / "mini_digits"), set(), "mini", OPTS, chosen)
    assert data.concepts == [names[2], names[4]] and "mini_digits_classnames.json" in data.files
    per_class = OPTS["train_per_class"] + OPTS["test_per_class"]
    images = [f for f in data.files if f.endswith(".png")]
    assert len(images) == 2 * per_class and set(images) < set(whole.files)
    bench = get_benchmark_of(tmp_path, data)
    assert bench.spec("mini_digits").classnames == (names[2], names[4])
    assert len(bench.load("mini_digits", "train")) == 2 * OPTS["train_per_class"]
    verify(data, "v1.2")
    generated = resolve_source("mini:mini_digits", set(), "mini", OPTS, chosen)
    assert generated.files == {} and generated.concepts == [names[2], names[4]]
    assert generated.digest != resolve_source("mini:mini_digits", set(), "mini", OPTS).digest
    assert resolve_source("mini:mini_digits", set(), "mini", OPTS, [names[2]]).digest != generated.digest
    verify(generated, "v1.3")
    assert len(get_benchmark_of(tmp_path, generated).load("mini_digits", "test")) == 2 * OPTS["test_per_class"]
