"""`fif data show` / `fif data materialize` as library functions."""

from __future__ import annotations

import pytest

from fif.data.mini import build_mini
from fif.data.show import describe, materialize, sample_grid
from fif.data.sources.fif_layout import read_split

SMALL = dict(pool_size=40, train_per_class=3, test_per_class=2, eval_size=30, retrieval_train=12, retrieval_test=8)


@pytest.fixture(scope="module")
def bench():
    return build_mini(**SMALL)


def test_describe_lists_every_dataset_with_role_kind_classes_sizes_and_primer(bench):
    text = describe(bench)
    lines = text.splitlines()
    assert lines[0].split()[:6] == ["dataset", "role", "kind", "classes", "train", "test"]
    for spec in bench.datasets.values():
        row = next(line for line in lines if line.startswith(spec.name + " "))
        assert spec.role in row and spec.kind in row
        if spec.kind == "classification":
            assert spec.primer in row
    colors = next(line for line in lines if line.startswith("mini_colors "))
    assert colors.split()[3:6] == ["8", "24", "24"]  # 30 // 8 * 8 per split
    assert "pretraining pool: mini_pretrain" in text


def test_describe_rejects_unknown_dataset(bench):
    with pytest.raises(KeyError, match="mini_colors"):
        describe(bench, ["mini_colours"])


def test_sample_grid_writes_a_png(bench, tmp_path):
    path = sample_grid(bench, tmp_path / "sub" / "grid.png", per_dataset=3, datasets=["mini_pretrain", "mini_digits"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_materialize_writes_a_readable_layout(bench, tmp_path):
    written = materialize(bench, tmp_path, datasets=["mini_letters", "mini_pretrain"])
    assert sorted(p.name for p in written) == ["mini_letters_test.json", "mini_letters_train.json", "mini_pretrain_train.json"]
    back = read_split(tmp_path / "mini_letters", "train", spec=bench.spec("mini_letters"))
    assert len(back) == len(bench.load("mini_letters", "train"))
    only_test = materialize(bench, tmp_path / "t", datasets=["mini_letters"], splits=["test"])
    assert [p.name for p in only_test] == ["mini_letters_test.json"]


def test_datasets_without_a_train_split_show_a_dash_and_grid_from_test(tmp_path):
    """FiF's eval-only datasets ship only a test split: `fif data show fif` must not fail on them."""
    from fif.data.registry import Benchmark, MissingSplitError

    mini = build_mini(pool_size=20, eval_size=12, train_per_class=2, test_per_class=2, retrieval_train=4, retrieval_test=4)

    def loader(spec, split):
        if spec.role == "eval_only" and split == "train":
            raise MissingSplitError(f"{spec.name} has no train split")
        return mini.load(spec.name, split)

    bench = Benchmark(name="testonly", datasets=mini.datasets, loader=loader, pretraining_pool=mini.pretraining_pool)
    table = describe(bench, ["mini_colors", "mini_digits"])
    colors = next(line for line in table.splitlines() if line.startswith("mini_colors"))
    assert colors.split()[4:6] == ["-", "8"]  # 12 // 8 colours * 8
    assert sample_grid(bench, tmp_path / "g.png", per_dataset=2, datasets=["mini_colors"]).is_file()
