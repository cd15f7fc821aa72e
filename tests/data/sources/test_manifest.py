"""Caption manifests (CSV / JSONL): merged rows, labels, primer fallback, and errors naming file:line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fif.data.sources.common import SourceError, read_classnames_file
from fif.data.sources.manifest import ManifestKeys, manifest_labels, read_manifest
from fif.data.specs import DatasetSpec

CLS = DatasetSpec("scans", "classification", "adaptation", ("benign", "malignant"), "A scan of a {} lesion.")
PAIRS = DatasetSpec("pairs", "retrieval", "eval_only")


@pytest.fixture
def images(tmp_path):
    for name, colour in (("a.png", (255, 0, 0)), ("b.png", (0, 255, 0)), ("c.png", (0, 0, 255))):
        Image.new("RGB", (9, 9), colour).save(tmp_path / name)
    return tmp_path


def test_csv_rows_of_the_same_image_merge_captions(images):
    path = images / "train.csv"
    path.write_text('image,caption,label\na.png,"a red, round lesion",malignant\nb.png,,benign\n'
                    "a.png,another view,malignant\n")
    data = read_manifest(CLS, "train", path)
    assert len(data) == 2
    assert data.paths[0] == str(images / "a.png")
    assert list(data.captions(0)) == ["a red, round lesion", "another view"]
    assert list(data.captions(1)) == ["A scan of a benign lesion."]  # no caption: the primer
    assert data.targets.tolist() == [1, 0]
    assert data.images(np.array([1]), 4)[0, 1].mean() > 0.9


def test_jsonl_with_caption_lists_and_integer_labels(images):
    path = images / "test.jsonl"
    rows = [{"path": "c.png", "text": ["one", "two"], "y": 1}, {"path": str(images / "a.png"), "text": "three", "y": 0}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    data = read_manifest(CLS, "test", path, ManifestKeys(image="path", caption="text", label="y"))
    assert [list(data.captions(i)) for i in range(2)] == [["one", "two"], ["three"]]
    assert data.targets.tolist() == [1, 0]


def test_retrieval_manifest_has_no_targets(images):
    path = images / "pairs.json"
    path.write_text(json.dumps([{"image": "a.png", "caption": "red"}, {"image": "b.png", "caption": "green"}]))
    data = read_manifest(PAIRS, "test", path)
    assert data.targets.tolist() == [-1, -1] and list(data.captions(1)) == ["green"]


def test_labels_are_inferred_sorted(images):
    path = images / "m.csv"
    path.write_text("image,label\na.png,zebra\nb.png,ant\nc.png,zebra\n")
    assert manifest_labels(path) == ["ant", "zebra"]


@pytest.mark.parametrize("text, match", [
    ("img,caption\na.png,x\n", r"m\.csv: no 'image' column.*image_key"),
    ("image,caption,label\na.png,x,\n", r"m\.csv:2: no 'label'"),
    ("image,caption,label\na.png,x,bening\n", r"m\.csv:2: label 'bening' is not a class"),
    ("image,caption,label\na.png,x,7\n", r"m\.csv:2: target id 7 is out of range"),
    ("image,caption,label\n,x,benign\n", r"m\.csv:2: empty 'image'"),
    ("image,caption,label\na.png,x,benign\na.png,y,malignant\n", r"m\.csv:3: image 'a.png' appears again"),
])
def test_csv_errors_name_file_and_line(images, text, match):
    (images / "m.csv").write_text(text)
    with pytest.raises(SourceError, match=match):
        read_manifest(CLS, "train", images / "m.csv")


def test_jsonl_errors_name_the_line(images):
    path = images / "m.jsonl"
    path.write_text('{"image": "a.png", "caption": "ok"}\n{"image": "b.png", "caption": \n')
    with pytest.raises(SourceError, match=r"m\.jsonl:2: not valid JSON"):
        read_manifest(PAIRS, "test", path)
    path.write_text('{"image": "a.png", "caption": 5}\n')
    with pytest.raises(SourceError, match=r"m\.jsonl:1: 'caption' must be a string or a list"):
        read_manifest(PAIRS, "test", path)
    path.write_text('{"image": "a.png"}\n')
    with pytest.raises(SourceError, match="needs at least one caption"):
        read_manifest(PAIRS, "test", path)


def test_pickles_and_unknown_formats_are_refused(images):
    (images / "m.pkl").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(SourceError, match="refusing to load a pickle"):
        read_manifest(PAIRS, "test", images / "m.pkl")
    with pytest.raises(SourceError, match="refusing to load a pickle"):
        read_classnames_file(images / "m.pkl")
    (images / "m.parquet").write_bytes(b"")
    with pytest.raises(SourceError, match="unknown manifest format"):
        read_manifest(PAIRS, "test", images / "m.parquet")
    with pytest.raises(SourceError, match="manifest not found"):
        read_manifest(PAIRS, "test", images / "none.csv")


def test_classnames_files(tmp_path):
    (tmp_path / "c.txt").write_text("cat\n\ndog\n")
    assert read_classnames_file(tmp_path / "c.txt") == ["cat", "dog"]
    (tmp_path / "c.json").write_text('{"n01": "cat", "n02": "dog"}')
    assert read_classnames_file(tmp_path / "c.json") == {"n01": "cat", "n02": "dog"}
    (tmp_path / "d.json").write_text('["cat", "cat"]')
    with pytest.raises(SourceError, match="'cat' appears twice"):
        read_classnames_file(tmp_path / "d.json")
    (tmp_path / "e.json").write_text("[1, 2]")
    with pytest.raises(SourceError, match="e.json: expected a JSON list of class names"):
        read_classnames_file(tmp_path / "e.json")
