"""data.mixture.pool: a dataset of the benchmark, WebDataset shards, or a caption manifest."""

from __future__ import annotations

import pytest
from PIL import Image

from fif.data.pool import load_pool
from fif.data.sources.wds import write_shards


def test_dataset_name(toy):
    assert load_pool(toy, "toy_pool") is toy.load("toy_pool", "train")


def test_shard_pattern_and_folder(toy, tmp_path):
    write_shards(toy.load("toy_a", "train"), tmp_path / "s", samples_per_shard=20, image_size=8)
    by_pattern = load_pool(toy, str(tmp_path / "s" / "{00000..00001}.tar"), index_dir=tmp_path / "idx")
    by_folder = load_pool(toy, str(tmp_path / "s"))
    assert len(by_pattern) == len(by_folder) == len(toy.load("toy_a", "train"))
    assert by_pattern.spec.role == "pretraining" and by_pattern.spec.source == "wds"
    assert list(by_folder.captions(3)) == list(toy.load("toy_a", "train").captions(3))


def test_manifest(toy, tmp_path):
    Image.new("RGB", (6, 6)).save(tmp_path / "x.png")
    (tmp_path / "pool.csv").write_text("image,caption\nx.png,a black square\n")
    data = load_pool(toy, str(tmp_path / "pool.csv"))
    assert len(data) == 1 and list(data.captions(0)) == ["a black square"]


def test_unknown_pool_names_the_choices(toy):
    with pytest.raises(KeyError, match=r"did you mean 'toy_pool'.*WebDataset shards"):
        load_pool(toy, "toy_pol")
