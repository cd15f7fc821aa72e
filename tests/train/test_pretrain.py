"""The mini base model: built from scratch on the pool, cached by everything that determines it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from fif.data import mini
from fif.train.pretrain import PretrainSpec, base_model_path, ensure_base_model

TINY = PretrainSpec(steps=3, batch_size=16, warmup_steps=1)
OPTIONS = {"pool_size": 64}


def test_builds_once_then_reads_the_cache(tmp_path):
    path, built = ensure_base_model(tmp_path, TINY, OPTIONS)
    assert built and path.is_file() and path == base_model_path(tmp_path, TINY, OPTIONS)
    weights = load_file(path)
    assert any(k.startswith("visual.") for k in weights) and "logit_scale" in weights
    stamp = path.stat().st_mtime_ns
    again, built_again = ensure_base_model(tmp_path, TINY, OPTIONS)
    assert again == path and not built_again and path.stat().st_mtime_ns == stamp


def test_same_spec_gives_identical_weights(tmp_path):
    a, _ = ensure_base_model(tmp_path / "a", TINY, OPTIONS)
    b, _ = ensure_base_model(tmp_path / "b", TINY, OPTIONS)
    wa, wb = load_file(a), load_file(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_training_moves_the_weights_away_from_init(tmp_path):
    from fif.model.clip import build_clip

    torch.manual_seed(TINY.seed)
    init = build_clip(TINY.arch, pretrained=None).model.state_dict()
    path, _ = ensure_base_model(tmp_path, TINY, OPTIONS)
    trained = load_file(path)
    assert not torch.equal(init["visual.attnpool.c_proj.weight"], trained["visual.attnpool.c_proj.weight"])


def test_key_changes_with_recipe_options_and_world(monkeypatch):
    key = TINY.key(OPTIONS)
    assert key == TINY.key(dict(OPTIONS))
    assert dataclasses.replace(TINY, lr=1e-3).key(OPTIONS) != key
    assert TINY.key({**OPTIONS, "image_size": 64}) != key
    monkeypatch.setattr(mini, "WORLD_VERSION", mini.WORLD_VERSION + 1)
    assert TINY.key(OPTIONS) != key


def test_world_fingerprint_tracks_generated_content_not_split_sizes(monkeypatch):
    base = mini.world_fingerprint()
    assert mini.world_fingerprint(pool_size=10, eval_size=12) == base  # sizes do not change what is drawn
    assert mini.world_fingerprint(seed=1) != base
    assert mini.world_fingerprint(full_captions=2) != base
    # A change to the generator that forgot to bump WORLD_VERSION still gives a new fingerprint.
    original = mini.render.to_uint8
    monkeypatch.setattr(mini.render, "to_uint8", lambda canvas: 255 - original(canvas))
    assert mini.world_fingerprint() != base


def test_benchmark_without_a_pool_is_refused():
    from fif.data.registry import Benchmark
    from fif.train.pretrain import pretrain

    empty = Benchmark(name="nopool", datasets={}, loader=lambda spec, split: None, pretraining_pool=None)
    with pytest.raises(ValueError, match="no pretraining pool"):
        pretrain(TINY, empty, torch.device("cpu"))


def test_key_changes_with_the_architecture_config(monkeypatch):
    import open_clip

    key = TINY.key(OPTIONS)
    real = open_clip.get_model_config

    def wider(name):
        cfg = real(name)
        return {**cfg, "text_cfg": {**cfg["text_cfg"], "context_length": 16}} if name == TINY.arch else cfg

    monkeypatch.setattr(open_clip, "get_model_config", wider)
    assert TINY.key(OPTIONS) != key


def test_cli_builds_what_fif_run_with_the_same_overrides_would_use(tmp_path, capsys):
    from fif.cli import main
    from fif.train.pretrain import base_model_path

    options = "data.options={pool_size: 64}"
    code = main(["pretrain", "--steps", "2", "--cache-dir", str(tmp_path), options])
    out = capsys.readouterr().out
    spec = dataclasses.replace(PretrainSpec(), steps=2)
    expected = base_model_path(tmp_path, spec, {"pool_size": 64})
    assert code == 0 and expected.is_file() and f"built: {expected}" in out
    assert main(["pretrain", "--steps", "2", "--cache-dir", str(tmp_path), options]) == 0
    assert "cached:" in capsys.readouterr().out
    assert main(["pretrain", "data.optionz={}"]) == 2
    assert "data.optionz: unknown key" in capsys.readouterr().err  # with the nearest valid key


def test_each_tiny_architecture_has_a_recipe_and_others_get_the_default():
    from fif.train.pretrain import RECIPES, recipe_for

    assert set(RECIPES) == {"fif-mini-rn32", "fif-mini-rn32-w2", "fif-mini-vit32"}
    for arch, spec in RECIPES.items():
        assert recipe_for(arch) == dataclasses.replace(spec, arch=arch)
    assert recipe_for("RN50", "fif") == dataclasses.replace(PretrainSpec(), arch="RN50", benchmark="fif")


def test_the_base_model_sees_at_least_ten_times_the_mini_streams_compute():
    """The mini-world issue: a stream only nudges its base model (FiF's is ~4e-4 of the base's pretraining)."""
    from fif.config import load_config
    from fif.train.pretrain import RECIPES

    cfg = load_config("mini", [])
    stream_samples = cfg.budget.ft_steps * cfg.train.batch_size  # full fine-tuning's steps at the stream's batch
    for arch, spec in RECIPES.items():
        assert spec.steps * spec.batch_size >= 10 * stream_samples, arch
    assert cfg.train.lr <= 0.1 * RECIPES[cfg.model.arch].lr  # the update lr is well below the pretraining peak


def test_key_changes_with_the_compact_vocabulary(monkeypatch):
    from fif.train import pretrain as P

    key = TINY.key(OPTIONS)
    real = P.read_vocabulary
    monkeypatch.setattr(P, "read_vocabulary", lambda path: [*real(path), "zebra</w>"])
    assert TINY.key(OPTIONS) != key


def test_each_tiny_architecture_has_its_own_cached_base(tmp_path):
    """fif run and fif pretrain find an architecture's base by its recipe: one file per architecture, none shared."""
    from fif.train.pretrain import RECIPES, recipe_for

    paths = {base_model_path(tmp_path, recipe_for(arch), OPTIONS) for arch in RECIPES}
    assert len(paths) == len(RECIPES)
    assert all(base_model_path(tmp_path, recipe_for(arch), OPTIONS).name.startswith(f"{arch}-") for arch in RECIPES)


def test_the_cache_key_sees_a_change_in_how_batches_are_drawn(monkeypatch):
    """A code change that draws other pretraining batches (same data, same recipe, same fif version) must
    not reuse a base built by the old code: the key hashes the first step as the code makes it."""
    import fif.train.pretrain as P

    before = TINY.key(OPTIONS)
    real = P.MixtureSampler
    monkeypatch.setattr(P, "MixtureSampler", lambda counts, update, seed, task: real(counts, update=update,
                                                                                      seed=seed + 1, task=task))
    assert TINY.key(OPTIONS) != before
    monkeypatch.setattr(P, "MixtureSampler", real)
    assert TINY.key(OPTIONS) == before


def test_the_cache_key_sees_the_initial_weights_and_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    key = TINY.key(OPTIONS)
    assert torch.equal(torch.rand(4), expected)  # computing the key drew nothing from the global generator
    assert dataclasses.replace(TINY, seed=1).key(OPTIONS) != key  # another seed: other initial weights and batches
