"""The two reference points end to end: zeroshot (evaluate the base model, no update) and oracle
(the whole stream as one task with the whole budget)."""

from __future__ import annotations

import json

import pytest
import torch

import fif

SMALL = [
    "model.pretrained=null",
    "run.threads=1",
    "budget.ft_steps=6",
    "stream.tasks=3",
    "stream.datasets=[mini_digits,mini_relations]",
    "train.batch_size=8",
    "train.log_every=3",
    "eval.min_samples=20",
    "eval.datasets=[mini_digits,mini_colors]",
    "data.options={pool_size: 100, train_per_class: 4, test_per_class: 2, eval_size: 24, retrieval_train: 8, retrieval_test: 8}",
]


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def events(out):
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def test_zeroshot_evaluates_the_base_model_only(tmp_path):
    out = tmp_path / "zs"
    result = fif.run(fif.load_config("mini", [*SMALL, "stream.reference=zeroshot"]), out_dir=out)
    assert [p["task"] for p in result.summary["trajectory"]] == [-1]
    assert result.final["task"] == -1
    assert result.summary["ledger"]["spent_mafs"] == 0 and result.summary["ledger"]["steps"] == 0
    assert json.loads((out / "run.json").read_text())["tasks"] == []
    assert not [e for e in events(out) if e["event"].startswith("task")]


def test_oracle_is_one_task_with_the_whole_budget(tmp_path):
    out = tmp_path / "oracle"
    result = fif.run(fif.load_config("mini", [*SMALL, "stream.reference=oracle"]), out_dir=out)
    tasks = json.loads((out / "run.json").read_text())["tasks"]
    assert len(tasks) == 1 and len(tasks[0]) == 14  # every concept of the two datasets
    (end,) = [e for e in events(out) if e["event"] == "task_end"]
    assert end["budget_mafs"] == pytest.approx(end["budget_total_mafs"])
    assert end["steps"] == 6  # the whole budget: 6 full fine-tuning steps
    assert [p["task"] for p in result.summary["trajectory"]] == [-1, 0]


def test_a_model_ordering_in_a_run_uses_the_base_model(tmp_path):
    from fif.data.registry import get_benchmark
    from fif.data.stream import OrderingOptions, build_tasks
    from fif.eval.concepts import ModelScorer
    from fif.model.clip import build_clip

    cfg = fif.load_config("mini", [*SMALL, "stream.ordering=similarity", "budget.ft_steps=3"])
    fif.run(cfg, out_dir=tmp_path / "sim")
    ran = json.loads((tmp_path / "sim" / "run.json").read_text())["tasks"]
    torch.manual_seed(cfg.run.seed)  # the runner seeds torch before building the (random-init) base model
    clip = build_clip(cfg.model.arch)
    benchmark = get_benchmark("mini", **cfg.data.options)
    expected = build_tasks(benchmark, "similarity", 3, seed=cfg.run.seed, datasets=cfg.stream.datasets,
                           scorer=ModelScorer(clip, options=OrderingOptions(batch_size=cfg.eval.batch_size)))
    assert ran == [list(t.concepts) for t in expected]
