"""FiF's on-disk layout: writing a mini split and reading it back, transforms, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fif.data.mini import build_mini
from fif.data.sources.fif_layout import (
    LayoutError,
    classnames_path,
    prompts_path,
    random_resized_crop,
    read_classnames,
    read_split,
    resize_center_crop,
    split_path,
    write_split,
)
from fif.data.specs import SplitData

SMALL = dict(pool_size=40, train_per_class=3, test_per_class=2, eval_size=30, retrieval_train=12, retrieval_test=8)


@pytest.fixture(scope="module")
def bench():
    return build_mini(**SMALL)


@pytest.fixture
def written(bench, tmp_path):
    data = bench.load("mini_shapes", "test")
    root = tmp_path / "mini_shapes"
    write_split(data, root)
    return data, root


def test_write_creates_fifs_files(written):
    data, root = written
    assert read_classnames(root) == list(data.spec.classnames)
    entries = json.loads(split_path(root, "test").read_text())
    assert len(entries) == len(data)
    key, entry = next(iter(entries.items()))
    assert (root / key).is_file() and key.endswith(".png")
    assert set(entry) == {"classname", "default_caption", "primer_caption", "synthetic_caption",
                          "synthetic_merged_caption", "target"}
    assert entry["classname"] == data.spec.classnames[entry["target"]]
    assert entry["primer_caption"] == data.spec.primer.format(entry["classname"])


def test_round_trip_keeps_images_captions_and_targets(written):
    data, root = written
    back = read_split(root, "test", spec=data.spec)
    assert isinstance(back, SplitData)
    assert len(back) == len(data)
    assert np.array_equal(back.targets, data.targets)
    assert [list(back.captions(i)) for i in range(len(back))] == data.texts
    idx = np.arange(len(data))
    original = data.images(idx, 32)
    assert torch.allclose(back.images(idx, 32, train=False), original, atol=1.5 / 255)


def test_spec_is_inferred_from_the_files(written):
    data, root = written
    back = read_split(root, "test")
    assert back.spec.kind == "classification" and back.spec.name == "mini_shapes"
    assert back.spec.classnames == tuple(read_classnames(root))
    # the written prompts come back (a tiny model's compact vocabulary knows them; "a photo of a {}." it does not)
    assert (back.spec.primer, back.spec.templates) == (data.spec.primer, data.spec.templates)


def test_without_a_prompts_file_the_primer_is_the_generic_one(written):
    _, root = written
    prompts_path(root).unlink()
    assert read_split(root, "test").spec.primer == "a photo of a {}."


def test_a_malformed_prompts_file_names_it(written):
    _, root = written
    prompts_path(root).write_text(json.dumps({"primer": "no placeholder"}))
    with pytest.raises(LayoutError, match="mini_shapes_prompts.json"):
        read_split(root, "test")


def test_retrieval_round_trip_keeps_every_caption(bench, tmp_path):
    data = bench.load("mini_captions", "test")
    write_split(data, tmp_path / "mini_captions")
    back = read_split(tmp_path / "mini_captions", "test", spec=data.spec)
    assert (back.targets == -1).all()
    assert [list(back.captions(i)) for i in range(len(back))] == data.texts


def test_train_transform_is_a_seeded_random_resized_crop(written):
    data, root = written
    back = read_split(root, "test", spec=data.spec)
    idx = np.arange(4)
    a = back.images(idx, 24, train=True, generator=torch.Generator().manual_seed(1))
    b = back.images(idx, 24, train=True, generator=torch.Generator().manual_seed(1))
    c = back.images(idx, 24, train=True, generator=torch.Generator().manual_seed(2))
    assert a.shape == (4, 3, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_transforms_on_non_square_images():
    img = torch.rand(3, 40, 60)
    assert resize_center_crop(img, 32).shape == (3, 32, 32)
    assert random_resized_crop(img, 32, torch.Generator().manual_seed(0)).shape == (3, 32, 32)


def test_text_prefers_default_caption_then_synthetic_merged(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    from PIL import Image

    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / name)
    classnames_path(root).write_text(json.dumps(["cat", "dog"]))
    split_path(root, "train").write_text(json.dumps({
        "a.png": {"classname": "cat", "default_caption": "a cat on a mat", "synthetic_merged_caption": "x", "target": 0},
        "b.png": {"classname": "dog", "default_caption": None, "synthetic_merged_caption": "a dog", "target": 1},
        "c.png": {"classname": "dog", "default_caption": ["one dog", "a dog again"]},
    }))
    data = read_split(root, "train")
    assert [list(data.captions(i)) for i in range(3)] == [["a cat on a mat"], ["a dog"], ["one dog", "a dog again"]]
    assert data.targets.tolist() == [0, 1, 1]  # the third from its classname


def _layout(tmp_path, entries, classnames=("cat",)):
    root = tmp_path / "ds"
    root.mkdir(exist_ok=True)
    if classnames is not None:
        classnames_path(root).write_text(json.dumps(list(classnames)))
    split_path(root, "train").write_text(entries if isinstance(entries, str) else json.dumps(entries))
    return root


def test_missing_split_file_names_it(tmp_path):
    with pytest.raises(LayoutError, match=r"nothing_train\.json: file not found"):
        read_split(tmp_path / "nothing", "train")


def test_malformed_json_names_the_file(tmp_path):
    root = _layout(tmp_path, "{not json")
    with pytest.raises(LayoutError, match=r"ds_train\.json: not valid JSON"):
        read_split(root, "train")


def test_bad_classnames_file_names_it(tmp_path):
    root = _layout(tmp_path, {"a.png": {"default_caption": "x"}})
    classnames_path(root).write_text(json.dumps({"cat": 0}))
    with pytest.raises(LayoutError, match=r"ds_classnames\.json: expected a JSON list"):
        read_split(root, "train")


def test_null_captions_fall_back_to_the_primer_caption_as_the_reference_does(tmp_path):
    # FiF's test splits (and AI2DIAGRAMS' or BIRDSNAP's train splits) have null default and merged captions.
    nulls = {"default_caption": None, "synthetic_caption": None, "synthetic_merged_caption": None}
    root = _layout(tmp_path, {
        "a.png": {**nulls, "classname": "cat", "primer_caption": "A photo of a cat, a pet.", "target": 0},
        "b.png": {**nulls, "classname": "cat", "primer_caption": None, "target": 0},
        "c.png": {**nulls, "synthetic_merged_caption": ["merged one"], "target": 0},
    })
    spec = read_split(root, "train").spec
    data = read_split(root, "train", spec=spec)
    assert [list(data.captions(i)) for i in range(3)] == [
        ["A photo of a cat, a pet."], [spec.primer.format("cat")], ["merged one"]]
    assert data.own_captions == 1


def test_entry_without_caption_or_class_names_the_entry(tmp_path):
    root = _layout(tmp_path, {"a.png": {"default_caption": None, "synthetic_merged_caption": None}})
    classnames_path(root).unlink()  # a retrieval pair needs a caption of its own
    with pytest.raises(LayoutError, match=r"entry 'a.png' has no caption"):
        read_split(root, "train")


def test_target_out_of_range_and_unknown_classname(tmp_path):
    root = _layout(tmp_path, {"a.png": {"default_caption": "x", "target": 5}})
    with pytest.raises(LayoutError, match="target 5 is out of range"):
        read_split(root, "train")
    root = _layout(tmp_path, {"a.png": {"default_caption": "x", "classname": "emu"}})
    with pytest.raises(LayoutError, match="classname 'emu' is not in ds_classnames.json"):
        read_split(root, "train")


def test_missing_and_corrupt_images_name_the_file(tmp_path):
    root = _layout(tmp_path, {"a.png": {"default_caption": "x", "target": 0}, "b.png": {"default_caption": "y", "target": 0}})
    (root / "b.png").write_bytes(b"not a png")
    data = read_split(root, "train")
    with pytest.raises(LayoutError, match=r"a\.png: image listed in .*ds_train\.json is missing"):
        data.images(np.array([0]), 8)
    with pytest.raises(LayoutError, match=r"b\.png: cannot decode image"):
        data.images(np.array([1]), 8)


def test_a_decompression_bomb_is_named_not_raised_raw(tmp_path, monkeypatch):
    from PIL import Image

    root = _layout(tmp_path, {"a.png": {"default_caption": "x", "target": 0}})
    Image.new("RGB", (12, 10)).save(root / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(LayoutError, match=r"a\.png: refused to decode: .*MAX_IMAGE_PIXELS"):
        read_split(root, "train").images(np.array([0]), 8)


def test_empty_or_non_object_split_file(tmp_path):
    root = _layout(tmp_path, [])
    with pytest.raises(LayoutError, match="non-empty JSON object"):
        read_split(root, "train")
    root = _layout(tmp_path, {"a.png": "a caption"})
    with pytest.raises(LayoutError, match="entry 'a.png' must be an object"):
        read_split(root, "train")
