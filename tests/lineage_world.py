"""A tiny lineage world shared by the update tests (on the test path: ``pythonpath`` in pyproject.toml): mini
datasets materialized to disk in FiF's layout (as `fif data materialize` writes them), a base model pretrained for
60 steps on a small mini pool (since mini world v3 it is at chance on the guard sets), and
a recipe of 6 fine-tuning steps per update, a small evaluation and a checkpoint every 2 steps.

The pool is world v3's (``pool_letters=0``; world v4 added printed letters to it): the gate tests need a
candidate that lowers a guard set, measured on this fixture, and a tiny base pretrained on v4's pool gave
none at lr 1.0. The letters change no dataset the lineage tests read, only the 60-step base model."""

from __future__ import annotations

import json
from pathlib import Path

from fif.data.registry import get_benchmark
from fif.data.show import materialize
from fif.train.pretrain import PretrainSpec, ensure_base_model

OPTS = {"pool_letters": 0, "pool_size": 200, "train_per_class": 6, "test_per_class": 3, "eval_size": 30, "retrieval_train": 30,
        "retrieval_test": 10}
DATASETS = ("mini_digits", "mini_letters", "mini_fills")
RECIPE = [
    "budget.ft_steps=24", "stream.tasks=4", "train.batch_size=8", "train.log_every=2", "run.threads=1", "eval.min_samples=10", "eval.datasets=[mini_colors,mini_shapes]",
    "checkpoint.every_steps=2", "data.options=" + json.dumps(OPTS), "update.max_zs_drop=100",
]


def materialize_world(out: Path) -> Path:
    """The three update datasets, train and test splits, under ``out``."""
    materialize(get_benchmark("mini", **OPTS), out, list(DATASETS), ["train", "test"])
    return out


def base_model(cache_dir: Path) -> Path:
    """A small base model: 60 pretraining steps at batch 32 on the world's pool (about 15 s on one CPU thread)."""
    return ensure_base_model(cache_dir, PretrainSpec(steps=60, batch_size=32, warmup_steps=5, lr=3e-3), OPTS)[0]
