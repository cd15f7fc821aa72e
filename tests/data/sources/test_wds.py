"""WebDataset shards: brace patterns, the cached per-shard index, random access, and clear errors."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from fif.data.mini import build_mini
from fif.data.sources import wds
from fif.data.sources.common import SourceError
from fif.data.sources.wds import INDEX_SUFFIX, expand_braces, expand_shards, read_shards, write_shards
from fif.data.specs import DatasetSpec

POOL = DatasetSpec("pool", "retrieval", "pretraining")


@pytest.fixture(scope="module")
def pool_split():
    return build_mini(pool_size=10).load("mini_pretrain", "train")


@pytest.fixture
def shards(pool_split, tmp_path):
    return write_shards(pool_split, tmp_path / "shards", samples_per_shard=4, image_size=32)


def add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def png_bytes(colour=(255, 0, 0)):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_brace_expansion():
    assert expand_braces("s/{000..003}.tar") == [f"s/{i:03d}.tar" for i in range(4)]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("{3..1}") == ["3", "2", "1"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(SourceError, match="must be two integers"):
        expand_braces("{1..x}")


def test_patterns_folders_globs_and_lists(shards, tmp_path):
    folder = tmp_path / "shards"
    assert expand_shards(str(folder / "{00000..00002}.tar")) == shards
    assert expand_shards(str(folder)) == shards
    assert expand_shards("shards/*.tar", base=tmp_path) == shards
    assert expand_shards(f"{shards[2]}::{folder}/{{00000..00001}}.tar") == [shards[2], shards[0], shards[1]]
    with pytest.raises(SourceError, match=r"5 shard\(s\) of pattern .* not found: .*00003\.tar"):
        expand_shards(str(folder / "{00000..00007}.tar"))
    with pytest.raises(SourceError, match="matches no file"):
        expand_shards(str(folder / "*.tgz"))


def test_random_access_matches_the_source(pool_split, shards):
    data = read_shards(POOL, "train", str(shards[0].parent))
    assert len(data) == len(pool_split) == 10
    assert data.shard_of.tolist() == [0] * 4 + [1] * 4 + [2] * 2
    for i in (0, 5, 9):
        assert list(data.captions(i)) == list(pool_split.captions(i))
    idx = np.array([9, 0, 4])
    got = data.images(idx, 32)
    assert torch.allclose(got, pool_split.images(idx, 32), atol=1 / 255)
    assert data.targets.tolist() == [-1] * 10


def test_train_images_are_seeded_crops(shards):
    data = read_shards(POOL, "train", str(shards[0].parent))
    a = data.images(np.arange(3), 16, train=True, generator=torch.Generator().manual_seed(1))
    b = data.images(np.arange(3), 16, train=True, generator=torch.Generator().manual_seed(1))
    assert a.shape == (3, 3, 16, 16) and torch.equal(a, b)


def test_index_is_cached_next_to_the_shard_and_refreshed_on_change(shards, monkeypatch):
    read_shards(POOL, "train", str(shards[0]))
    cache = shards[0].with_name(shards[0].name + INDEX_SUFFIX)
    assert cache.is_file()

    def no_scan(shard):
        raise AssertionError("rescanned a shard whose index is cached")

    monkeypatch.setattr(wds, "scan_shard", no_scan)
    assert len(read_shards(POOL, "train", str(shards[0]))) == 4
    monkeypatch.undo()
    with tarfile.open(shards[0], "a") as tar:  # the shard grows: its index must be rebuilt
        add(tar, "extra.png", png_bytes())
        add(tar, "extra.txt", b"an extra sample")
    data = read_shards(POOL, "train", str(shards[0]))
    assert len(data) == 5 and list(data.captions(4)) == ["an extra sample"]


def test_read_only_folder_falls_back_to_the_index_dir(shards, tmp_path, monkeypatch):
    real_save = wds._save
    monkeypatch.setattr(wds, "_save", lambda path, *a: False if path.parent == shards[0].parent else real_save(path, *a))
    read_shards(POOL, "train", str(shards[1]), index_dir=tmp_path / "idx")
    assert not shards[1].with_name(shards[1].name + INDEX_SUFFIX).exists()
    assert len(list((tmp_path / "idx").glob(f"*{INDEX_SUFFIX}"))) == 1


def test_incomplete_samples_are_skipped_and_json_captions_read(tmp_path, caplog):
    shard = tmp_path / "mixed.tar"
    with tarfile.open(shard, "w") as tar:
        add(tar, "dir/", b"")
        add(tar, "s/0001.jpg", png_bytes())  # PIL sniffs the format, not the suffix
        add(tar, "s/0001.json", json.dumps({"caption": "from json", "url": "x"}).encode())
        add(tar, "s/0002.png", png_bytes())  # no caption: skipped
        add(tar, "s/0003.txt", b"no image: skipped")
        add(tar, "s/0004.webp", png_bytes((0, 0, 255)))
        add(tar, "s/0004.json", b'{"caption": "ignored"}')
        add(tar, "s/0004.txt", b"txt wins\nsecond caption")
        add(tar, "../../escape.png", png_bytes())  # a hostile name: indexed as a key, never extracted
        add(tar, "../../escape.txt", b"harmless")
    with caplog.at_level(logging.WARNING):
        data = read_shards(POOL, "train", str(shard))
    assert "skipped 2 sample(s)" in caplog.text
    assert [list(data.captions(i)) for i in range(len(data))] == [["from json"], ["txt wins", "second caption"], ["harmless"]]
    assert data.images(np.array([1]), 8)[0, 2].mean() > 0.9
    assert not (tmp_path.parent.parent / "escape.png").exists()


def test_compressed_or_non_tar_shards_are_refused(tmp_path):
    shard = tmp_path / "a.tar"
    with tarfile.open(shard, "w:gz") as tar:
        add(tar, "0.png", png_bytes())
    with pytest.raises(SourceError, match="not an uncompressed tar"):
        read_shards(POOL, "train", str(shard))


def test_no_usable_sample_and_classification_are_errors(tmp_path):
    shard = tmp_path / "a.tar"
    with tarfile.open(shard, "w") as tar:
        add(tar, "0.txt", b"caption only")
    with pytest.raises(SourceError, match="no sample has both"):
        read_shards(POOL, "train", str(shard))
    cls = DatasetSpec("c", "classification", "adaptation", ("a",))
    with pytest.raises(SourceError, match="kind: retrieval or role: pretraining"):
        read_shards(cls, "train", str(shard))


def test_pickles_without_open_files_and_reads_after(shards):
    data = read_shards(POOL, "train", str(shards[0].parent))
    data.captions(0)
    assert len(data._fds) == 1
    clone = pickle.loads(pickle.dumps(data))
    assert len(clone._fds) == 0
    assert list(clone.captions(6)) == list(data.captions(6))
    data.close()
    assert not data._fds


def test_open_files_are_bounded(shards, monkeypatch):
    monkeypatch.setattr(wds, "MAX_OPEN_SHARDS", 2)
    data = read_shards(POOL, "train", str(shards[0].parent))
    for i in (0, 5, 9, 1):
        data.captions(i)
    assert list(data._fds) == [2, 0]
    os_fds = list(data._fds.values())
    data.close()
    with pytest.raises(OSError):
        os.fstat(os_fds[0])
