"""Class folders: inferred classes, sidecar captions vs. primer captions, label maps, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fif.data.sources.common import SourceError
from fif.data.sources.folder import class_folders, read_folder
from fif.data.specs import DatasetSpec


def png(path, colour=(255, 0, 0), size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture
def birds(tmp_path):
    root = tmp_path / "birds"
    png(root / "robin" / "a.png", (200, 0, 0))
    png(root / "robin" / "sub" / "b.jpg", (190, 0, 0))
    png(root / "wren" / "c.png", (0, 0, 200))
    (root / "wren" / "c.txt").write_text("a wren on a branch\n\na small brown bird\n")
    png(root / ".hidden" / "x.png")
    (root / "robin" / "notes.md").write_text("not an image")
    return root


def spec(classes=("robin", "wren"), kind="classification", role="adaptation"):
    return DatasetSpec("birds", kind, role, tuple(classes), "A photo of a {}, a type of bird.")


def test_classes_are_sorted_visible_folders(birds):
    assert class_folders(birds) == ["robin", "wren"]


def test_targets_captions_and_images(birds):
    data = read_folder(spec(), "train", birds)
    assert len(data) == 3
    assert data.targets.tolist() == [0, 0, 1]
    assert data.captions(0) == ["A photo of a robin, a type of bird."]
    assert data.captions(2) == ["a wren on a branch", "a small brown bird"]
    x = data.images(np.array([0, 2]), 8)
    assert x.shape == (2, 3, 8, 8) and 0.0 <= x.min() and x.max() <= 1.0
    assert x[0, 0].mean() > 0.7 and x[1, 2].mean() > 0.7  # red robin, blue wren


def test_class_ids_follow_the_spec_not_the_folder_order(birds):
    data = read_folder(spec(("wren", "robin")), "train", birds)
    assert data.targets.tolist() == [1, 1, 0]


def test_label_map_renames_folders(birds):
    data = read_folder(spec(("American robin", "house wren")), "train", birds,
                       label_map={"robin": "American robin", "wren": "house wren"})
    assert data.captions(0) == ["A photo of a American robin, a type of bird."]


def test_folder_without_a_class_is_named(birds):
    with pytest.raises(SourceError, match=r"wren.*maps to no class"):
        read_folder(spec(("robin",)), "train", birds)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(SourceError, match="folder not found"):
        read_folder(spec(), "train", tmp_path / "nope")


def test_retrieval_folder_needs_sidecars(tmp_path):
    png(tmp_path / "pairs" / "a.png")
    (tmp_path / "pairs" / "a.txt").write_text("a red square\n")
    png(tmp_path / "pairs" / "b.png")
    with pytest.raises(SourceError, match=r"b\.png: no captions.*b\.txt"):
        read_folder(spec((), "retrieval"), "test", tmp_path / "pairs")
    (tmp_path / "pairs" / "b.txt").write_text("another red square")
    data = read_folder(spec((), "retrieval"), "test", tmp_path / "pairs")
    assert [list(data.captions(i)) for i in range(2)] == [["a red square"], ["another red square"]]
    assert data.targets.tolist() == [-1, -1]


def test_corrupt_image_is_named_when_decoded(birds):
    (birds / "robin" / "a.png").write_bytes(b"not a png")
    data = read_folder(spec(), "train", birds)
    with pytest.raises(SourceError, match=r"a\.png.*cannot decode"):
        data.images(np.array([0]), 8)


@pytest.mark.parametrize("damage", ["decompression bomb", "truncated png"])
def test_decode_errors_of_any_kind_name_the_file(damage, birds, monkeypatch):
    """PIL raises DecompressionBombError (not an OSError) for huge images and other types for broken ones:
    every one becomes the source's error naming the file."""
    if damage == "decompression bomb":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # a 12x10 image is then > 2x the limit
        fix = "MAX_IMAGE_PIXELS"
    else:
        good = (birds / "robin" / "a.png").read_bytes()
        (birds / "robin" / "a.png").write_bytes(good[: len(good) // 2])
        fix = "corrupt"
    data = read_folder(spec(), "train", birds)
    with pytest.raises(SourceError, match=rf"robin/a\.png .*{fix}"):
        data.images(np.array([0]), 8)
