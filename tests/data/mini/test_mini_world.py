"""The mini benchmark: structure, determinism, balance, grounded captions, disjoint splits."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
import torch

from fif.data.mini import MiniSizes, build_mini, generate_split
from fif.data.mini.world import DIGITS, catalogue, digit_split
from fif.data.registry import get_benchmark
from fif.data.specs import InMemorySplit

SMALL = dict(pool_size=120, train_per_class=6, test_per_class=4, eval_size=60, retrieval_train=24, retrieval_test=16)


@pytest.fixture(scope="module")
def bench():
    return build_mini(**SMALL)


def test_registered_as_mini_and_structured_like_fif(bench):
    assert get_benchmark("mini", **SMALL).datasets.keys() == bench.datasets.keys()
    adaptation, eval_only = bench.adaptation, bench.eval_only
    assert len(adaptation) >= 8 and len(eval_only) >= 5
    assert any(s.kind == "retrieval" for s in adaptation) and any(s.kind == "retrieval" for s in eval_only)
    pool = bench.spec(bench.pretraining_pool)
    assert pool.role == "pretraining"
    for spec in bench.datasets.values():
        assert spec.release_year is not None and spec.source == "mini" and spec.description
        if spec.kind == "classification":
            assert spec.num_classes >= 3 and len(set(spec.classnames)) == spec.num_classes
            assert spec.primer.count("{}") == 1


def test_release_years_span_several_periods(bench):
    years = sorted((s.release_year, s.name) for s in bench.adaptation)
    assert len({y for y, _ in years}) >= 5  # time-incremental streams have several periods


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_split_is_well_formed_and_class_balanced(bench, split):
    sizes = MiniSizes(**SMALL)
    for spec in bench.datasets.values():
        if spec.role == "pretraining" and split == "test":
            continue
        data = bench.load(spec.name, split)
        assert isinstance(data, InMemorySplit)
        assert data.pixels.dtype == torch.uint8 and data.pixels.shape[1:] == (3, 32, 32)
        if spec.kind == "classification":
            counts = np.bincount(data.targets, minlength=spec.num_classes)
            assert counts.min() == counts.max() > 0, f"{spec.name}/{split} unbalanced: {counts}"
            expected = (sizes.train_per_class if split == "train" else sizes.test_per_class) * spec.num_classes
            if spec.role == "adaptation":
                assert len(data) == expected
        else:
            assert (data.targets == -1).all()
        assert all(len(c) >= 1 and all(isinstance(t, str) and t for t in c) for c in data.texts)


def test_pool_has_no_test_split_and_bad_splits_name_the_valid_ones(bench):
    with pytest.raises(ValueError, match="valid splits: train$"):
        bench.load(bench.pretraining_pool, "test")
    with pytest.raises(ValueError, match="train, test"):
        bench.load("mini_colors", "val")


def _mentions(caption: str, classname: str) -> bool:
    flags = 0 if len(classname) == 1 and classname.isalpha() else re.IGNORECASE  # the letter "A" is not the article
    return re.search(rf"(?<![\w]){re.escape(classname)}(?![\w])", caption, flags) is not None


def test_captions_mention_the_class(bench):
    for spec in bench.datasets.values():
        if spec.kind != "classification" or spec.role == "pretraining":
            continue
        data = bench.load(spec.name, "train")
        for texts, target in zip(data.texts, data.targets):
            name = spec.classnames[target]
            # the canonical caption names every factor; adaptation captions all name the class
            checked = texts if spec.role == "adaptation" else texts[:1]
            for caption in checked:
                assert _mentions(caption, name), f"{spec.name}: {caption!r} does not mention {name!r}"


def test_pool_captions_name_every_factor_in_the_first_caption(bench):
    pool = bench.load(bench.pretraining_pool, "train")
    for texts in pool.texts[:50]:
        if texts[0].startswith("the number"):  # a printed digit
            assert re.fullmatch(r'the number "\d" in \w+', texts[0]) and len(texts) == 4, texts
        elif texts[0].startswith("the letter"):  # a printed lower-case letter
            assert re.fullmatch(r'the letter "[a-z]" in \w+', texts[0]) and len(texts) == 4, texts
        else:
            assert re.fullmatch(r"an? \w+ \w+ \w+ in the [\w ]+", texts[0]), texts[0]
            assert len(texts) == 6  # 4 full-attribute, 1 shape alone, 1 one other attribute


def test_same_seed_gives_identical_bytes_and_other_seeds_differ():
    a, b, c = build_mini(seed=3, **SMALL), build_mini(seed=3, **SMALL), build_mini(seed=4, **SMALL)
    for name in a.datasets:
        split = "train"
        x, y, z = a.load(name, split), b.load(name, split), c.load(name, split)
        assert x.pixels.numpy().tobytes() == y.pixels.numpy().tobytes(), name
        assert x.texts == y.texts and np.array_equal(x.targets, y.targets), name
        assert x.pixels.numpy().tobytes() != z.pixels.numpy().tobytes(), name


def test_a_split_does_not_depend_on_which_splits_were_loaded_before():
    first = build_mini(**SMALL)
    first.load("mini_digits", "test")
    fresh = build_mini(**SMALL)
    assert torch.equal(first.load("mini_shapes", "train").pixels, fresh.load("mini_shapes", "train").pixels)


def _hashes(data: InMemorySplit) -> set[str]:
    return {hashlib.sha1(p.numpy().tobytes()).hexdigest() for p in data.pixels}


def test_train_and_test_images_are_disjoint(bench):
    for spec in bench.datasets.values():
        if spec.role == "pretraining":
            continue
        assert not _hashes(bench.load(spec.name, "train")) & _hashes(bench.load(spec.name, "test")), spec.name


def test_digit_train_and_test_use_disjoint_handwritten_glyphs():
    train, test = digit_split("train"), digit_split("test")
    assert sorted(train) == list(range(len(DIGITS)))
    for c in train:
        assert len(train[c]) > 100 and len(test[c]) > 40
        assert not set(train[c]) & set(test[c])


def test_image_size_64_and_sizes_options():
    b = build_mini(image_size=64, **SMALL)
    for name in ("mini_pretrain", "mini_digits", "mini_shapes3d", "mini_counting"):
        assert b.load(name, "train").pixels.shape[-2:] == (64, 64)
    assert len(build_mini(**{**SMALL, "pool_size": 50}).load("mini_pretrain", "train")) == 50


def test_bad_options_are_rejected_with_the_valid_names():
    with pytest.raises(ValueError, match="pool_size"):
        build_mini(pool_sise=10)
    with pytest.raises(ValueError, match="positive integer"):
        build_mini(train_per_class=0)
    with pytest.raises(ValueError, match="image_size"):
        build_mini(image_size=8)
    with pytest.raises(ValueError, match="distinct letters"):
        build_mini(letters="AAB")


def test_letters_option_sets_the_classes():
    b = build_mini(letters="XYZ", **SMALL)
    assert b.spec("mini_letters").classnames == ("X", "Y", "Z")


def test_generate_split_directly_from_the_catalogue():
    ds = catalogue()["mini_counting"]
    data = generate_split(ds, "test", seed=0, image_size=32, sizes=MiniSizes(**SMALL))
    assert len(data) == SMALL["test_per_class"] * ds.spec.num_classes


def test_eval_only_and_adaptation_concept_words_overlap_only_on_purpose(bench):
    from fif.data.mini.world import ON_PURPOSE_OVERLAPS, concept_words

    eval_words = {w for s in bench.eval_only for c in s.classnames for w in concept_words(c)}
    for spec in bench.adaptation:
        shared = {w for c in spec.classnames for w in concept_words(c)} & eval_words
        allowed = ON_PURPOSE_OVERLAPS.get(spec.name, (frozenset(), ""))[0]
        assert shared == allowed, f"{spec.name} shares {sorted(shared)} with evaluation-only class names; declared: {sorted(allowed)}"


def test_concept_words_drop_fillers_and_keep_hyphenated_words():
    from fif.data.mini.world import concept_words

    assert concept_words("square located in the top left") == {"square", "top", "left"}
    assert concept_words("two-tone") == {"two-tone"} and concept_words("3") == {"3"}
