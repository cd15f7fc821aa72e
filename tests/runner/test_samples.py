"""A run's unreadable images: each logged once as an event, counted per source in the summary, restored
on resume, and past ``data.max_bad_samples`` the run stops naming them; and the data fails before the
model is built."""

from __future__ import annotations

import json

import pytest

import fif
from fif.data.bad_samples import BadSampleLog, TooManyBadSamplesError
from fif.data.batch import Batch
from fif.results.events import summarize
from fif.runner import samples
from fif.train.distributed import Solo
from fif_reference import class_names, write_dataset, write_shard, write_stream


class _Spec:
    def __init__(self, ranks=None):
        self.events, self.ranks = [], ranks or Solo()

    def emit(self, event: dict) -> None:
        self.events.append(event)


class _State:
    def __init__(self, cap: int, files=None):
        self.bad_samples = BadSampleLog(cap, files or {})


def test_each_file_is_logged_once_and_the_cap_stops_the_run(caplog):
    spec, state = _Spec(), _State(cap=2)
    batches = [Batch(None, None, None, bad=(("CUB200", "a.jpg"),)), Batch(None, None, None),
               Batch(None, None, None, bad=(("CUB200", "a.jpg"), ("pool", "s.tar (sample 1)")))]
    assert len(list(samples.watch(spec, state, batches, task=0))) == 3
    assert [e["files"] for e in spec.events] == [{"CUB200": ["a.jpg"]}, {"pool": ["s.tar (sample 1)"]}]
    assert "skipped an unreadable image of CUB200: a.jpg" in caplog.text
    assert summarize(spec.events)["bad_samples"] == {
        "total": 2, "by_source": {"CUB200": 1, "pool": 1}, "files": {"CUB200": ["a.jpg"], "pool": ["s.tar (sample 1)"]}}
    resumed, known = _Spec(), _State(cap=2, files={k: list(v) for k, v in state.bad_samples.files.items()})
    samples.record(resumed, known, 1, [("CUB200", "a.jpg")])
    assert resumed.events == []  # known before the checkpoint: not logged twice
    with pytest.raises(TooManyBadSamplesError, match="3 unreadable image"):
        samples.record(resumed, known, 1, [("CUB200", "b.jpg")])


class _Benchmark:
    def bad_samples(self):
        return []


class _RankOf2(Solo):
    """Rank 0 of 2, whose partner met ``theirs``."""

    world_size = 2

    def __init__(self, theirs):
        self.theirs = theirs

    def gather_objects(self, obj):
        return [obj, self.theirs]


def test_ranks_check_the_cap_together_on_every_rank_s_files():
    """Each rank decodes only its rows: mid-task its files stay its own and nobody stops alone; after the
    evaluation every rank takes every rank's files and checks the cap."""
    spec, state = _Spec(_RankOf2([("CUB200", "b.jpg"), ("CUB200", "c.jpg")])), _State(cap=2)
    spec.benchmark, spec.pretraining_pool = _Benchmark(), None
    batches = [Batch(None, None, None, bad=(("CUB200", "a.jpg"), ("CUB200", "d.jpg"), ("pool", "e")))]
    assert len(list(samples.watch(spec, state, batches, task=0))) == 1  # 3 > cap, but not checked mid-task
    with pytest.raises(TooManyBadSamplesError, match="5 unreadable image"):
        samples.collect(spec, state, 0)
    assert state.bad_samples.files == {"CUB200": ["a.jpg", "d.jpg", "b.jpg", "c.jpg"], "pool": ["e"]}
    assert spec.events[-1]["files"] == {"CUB200": ["b.jpg", "c.jpg"]}  # the partner's, logged by rank 0


@pytest.fixture
def fif_root(tmp_path):
    root = tmp_path / "data"
    write_dataset(root, "CUB200", class_names("bird", 3), {"train": 4, "test": 2})
    write_dataset(root, "MNIST", class_names("digit", 2), {"test": 3})
    return root


def overrides(root, tmp_path, *extra):
    return [f"data.root={root}", "data.options={missing: skip}", "model.arch=fif-mini-rn32", "model.pretrained=null",
            "run.device=cpu", f"run.cache_dir={tmp_path / 'cache'}", "budget.ft_steps=2", "stream.tasks=1",
            "train.batch_size=8", "train.log_every=1", "eval.batch_size=64", "eval.min_samples=4",
            "data.num_workers=2", *extra]  # batches built in worker processes report what they skipped too


def test_the_data_fails_before_the_model_is_built(fif_root, tmp_path, monkeypatch):
    import fif.runner.setup as setup_module

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(setup_module, "load_model", no_model)
    pool = write_shard(tmp_path / "pool" / "00000.tar", 4)
    cfg = fif.load_config("fif", overrides(fif_root, tmp_path, "data.options={datasets: [CUB200, DTD]}",
                                           f"data.mixture.pool={pool}"))
    with pytest.raises(FileNotFoundError, match="DTD: missing folder"):
        setup_module.setup(cfg, tmp_path / "run")
    stream = write_stream(tmp_path / "s.json", ["CUB200+++bird thing 7"])
    cfg = fif.load_config("fif", overrides(fif_root, tmp_path, "stream.ordering=file", f"stream.file={stream}",
                                           f"data.mixture.pool={pool}"))
    with pytest.raises(ValueError, match="unknown class 'bird thing 7'"):
        setup_module.setup(cfg, tmp_path / "run")
    cfg = fif.load_config("fif", overrides(fif_root, tmp_path, f"data.mixture.pool={tmp_path / 'nope'}/{{0..3}}.tar"))
    with pytest.raises(ValueError, match="shard"):
        setup_module.setup(cfg, tmp_path / "run")


def test_a_run_skips_a_corrupt_pool_image_and_counts_it(fif_root, tmp_path):
    pool = write_shard(tmp_path / "pool" / "00000.tar", 16, corrupt=range(0, 16, 2))  # every batch meets some
    cfg = fif.load_config("fif", overrides(fif_root, tmp_path, f"data.mixture.pool={pool}", "data.max_bad_samples=8"))
    result = fif.run(cfg, out_dir=tmp_path / "run")
    bad = result.summary["bad_samples"]
    files = bad["files"]["pretraining_pool"]
    assert bad["by_source"] == {"pretraining_pool": len(files)} and bad["total"] == len(files) > 0
    assert all(int(f.rsplit("sample ", 1)[1].rstrip(")")) % 2 == 0 for f in files)  # only the corrupt ones
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert [f for e in events if e["event"] == "bad_samples" for f in e["files"]["pretraining_pool"]] == files
    assert [p["task"] for p in result.summary["trajectory"]] == [-1, 0]  # the run went on
    cfg = fif.load_config("fif", overrides(fif_root, tmp_path, f"data.mixture.pool={pool}", "data.max_bad_samples=0"))
    with pytest.raises(TooManyBadSamplesError, match=r"more than data.max_bad_samples=0:\n  pretraining_pool: .*00000\.tar"):
        fif.run(cfg, out_dir=tmp_path / "run2")
