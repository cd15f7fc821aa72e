"""A catalogue of bad inputs to `fif run`: each gives exit code 2, one `fif run: error: ...` message that
names the key or file (no traceback), and leaves no partial results behind."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest
import torch

from fif.cli import main
from fif.config import dump_yaml, load_config
from fif.runner.folder import RunLock, resume_config

TINY = [
    "model.pretrained=null", "train.batch_size=8", "eval.min_samples=10", "run.threads=1", "stream.tasks=2",
    "budget.ft_steps=16",
    "data.options={pool_size: 200, train_per_class: 6, test_per_class: 3, eval_size: 30, retrieval_train: 30, "
    "retrieval_test: 10}",
    "stream.datasets=[mini_digits,mini_letters]", "eval.datasets=[mini_digits,mini_colors]",
]
USER_BENCH = ["data.mixture.pretraining=0", "data.mixture.update=0.5", "data.mixture.buffer=0.5", "stream.datasets=[]",
              "eval.datasets=[]", "data.options={}"]


class _Pickled:
    """Runs a shell command when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("inputs")
    (d / "stream.json").write_text(json.dumps(["mini_digits+++7", "mini_digits+++not_a_digit"]))
    (d / "broken.yaml").write_text("run: [1, 2\n")
    (d / "list.yaml").write_text("- just\n- a list\n")
    (d / "empty.yaml").write_text("# nothing but a comment\n")
    for name, classes in (("nofolders", []), ("noimages", ["sparrow"])):
        for split in ("train", "test"):
            (d / name / "birds" / split).mkdir(parents=True)
            for c in classes:
                (d / name / "birds" / split / c).mkdir()
        (d / name / "bench.yaml").write_text("datasets:\n  - name: birds\n    source: folder\n    location: birds/{split}\n")
    torch.save({"visual.conv1.weight": torch.zeros(1), "x": _Pickled(d / "PWNED")}, d / "evil.pt")
    (d / "torn.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    return d


CATALOGUE = [
    # (id, arguments ({d} = the inputs folder), what the message must name)
    ("wrong type", ["train.lr=abc"], ["train.lr", "expected a finite number"]),
    ("not finite", ["train.lr=.nan"], ["train.lr", "finite"]),
    ("wrong type bool", ["eval.full_at_ends=maybe"], ["eval.full_at_ends", "true/false"]),
    ("unknown key", ["train.lrr=1e-4"], ["train.lrr", "did you mean lr"]),
    ("unknown section", ["trian.lr=1e-4"], ["trian", "did you mean train"]),
    ("lambdas do not sum to 1", ["data.mixture.update=0.5"], ["data.mixture", "must sum to 1"]),
    ("no tasks", ["stream.tasks=0"], ["stream.tasks"]),
    ("unknown method", ["method.name=finetun"], ["method.name", "did you mean 'finetune'"]),
    ("missing preset file", ["--preset", "{d}/none.yaml"], ["none.yaml", "does not exist"]),
    ("broken preset yaml", ["--preset", "{d}/broken.yaml"], ["broken.yaml", "not valid YAML"]),
    ("preset not a mapping", ["--preset", "{d}/list.yaml"], ["list.yaml", "mapping"]),
    ("missing stream file", ["stream.ordering=file", "stream.file={d}/none.json"], ["stream.file", "none.json"]),
    ("stream names unknown classes", ["stream.ordering=file", "stream.file={d}/stream.json"],
     ["stream.json", "not_a_digit", "mini_digits"]),
    ("more tasks than concepts", ["stream.tasks=50"], ["stream.tasks=50", "only 20 concepts"]),
    ("budget too small for one step", ["budget.ft_steps=0.01"], ["buys no step", "budget.ft_steps"]),
    ("missing weights file", ["model.pretrained={d}/none.safetensors"], ["model.pretrained", "does not exist"]),
    ("pickled weights file", ["model.pretrained={d}/evil.pt"], ["model.pretrained", "refused", "pickled"]),
    ("torn weights file", ["model.pretrained={d}/torn.safetensors"], ["torn.safetensors"]),
    ("unknown architecture", ["model.arch=ViT-Q-99"], ["model.arch", "ViT-Q-99"]),
    ("unknown eval dataset", ["eval.datasets=[mini_digitz]"], ["mini_digitz", "did you mean 'mini_digits'"]),
    ("unknown pretraining pool", ["data.mixture.pool=nope"], ["data.mixture.pool", "nope"]),
    ("bad benchmark option", ["data.options={train_per_class: 0}"], ["train_per_class"]),
    ("missing benchmark file", ["data.benchmark={d}/none.yaml", *USER_BENCH], ["none.yaml"]),
    ("dataset without class folders", ["data.benchmark={d}/nofolders/bench.yaml", *USER_BENCH], ["birds", "no class folders"]),
    ("dataset without images", ["data.benchmark={d}/noimages/bench.yaml", *USER_BENCH], ["birds/train", "no images"]),
    ("no CUDA", ["run.device=cuda"], ["run.device", "no CUDA"]),
    ("beta out of range", ["train.beta2=1"], ["train.beta2", "[0, 1)"]),
    ("eps zero", ["train.eps=0"], ["train.eps", "must be > 0"]),
    ("negative seed", ["run.seed=-1"], ["run.seed", "2**32"]),
    ("not a device", ["run.device=gpu"], ["run.device", "cuda:N"]),
    ("negative workers", ["data.num_workers=-1"], ["data.num_workers", ">= 0"]),
    ("empty preset file", ["--preset", "{d}/empty.yaml"], ["empty.yaml", "the file is empty", "--print-config"]),
]


def fif_run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(["run", "--no-progress", *argv])
    return code, capsys.readouterr().err


def assert_one_clear_error(code: int, err: str, must_name: list[str]) -> None:
    assert code == 2, err
    assert err.startswith("fif run: error: ") and "Traceback" not in err, err
    for text in must_name:
        assert text in err, f"{text!r} not in: {err}"


@pytest.mark.parametrize("case", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_gives_one_clear_error_and_no_results(case, files, tmp_path, capsys, caplog):
    caplog.set_level(logging.ERROR)  # open_clip warns about random init on the way
    _, args, must_name = case
    out = tmp_path / "run"
    args = [a.replace("{d}", str(files)) for a in args]
    flags = [a for a in args if a.startswith("--") or args.index(a) > 0 and args[args.index(a) - 1].startswith("--")]
    code, err = fif_run(["--out", str(out), *flags, *TINY, *[a for a in args if a not in flags]], capsys)
    assert_one_clear_error(code, err, must_name)
    assert not out.exists(), "a failed run left a run folder behind"
    assert not (files / "PWNED").exists(), "a pickle was executed"


def test_an_existing_folder_is_kept_with_or_without_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    code, err = fif_run(["--out", str(out), *TINY], capsys)
    assert_one_clear_error(code, err, [str(out), "does not look like a fif run folder", "choose another --out"])
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    code, err = fif_run(["--out", str(out), "--overwrite", *TINY], capsys)
    assert_one_clear_error(code, err, ["does not look like a fif run folder", "--overwrite only replaces fif run"])
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_overwrite_of_a_folder_with_a_config_yaml_deletes_nothing(tmp_path, capsys):
    """The issue's reproduction: a config.yaml does not make a folder fif's to empty."""
    out = tmp_path / "p"
    (out / "src").mkdir(parents=True)
    (out / "src" / "notes.txt").write_text("keep")
    (out / "config.yaml").write_text("lr: 1\n")
    code, err = fif_run(["--out", str(out), "--overwrite", *TINY], capsys)
    assert_one_clear_error(code, err, [str(out), "no run.json with fif's provenance"])
    assert (out / "src" / "notes.txt").read_text() == "keep" and (out / "config.yaml").read_text() == "lr: 1\n"


def test_a_missing_optional_package_is_found_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # as after `pip install -e .` without the peft extra
    code, err = fif_run(["--out", str(tmp_path / "run"), *TINY, "method.name=lora"], capsys)
    assert_one_clear_error(code, err, ["method.name=lora needs the peft package", "pip install 'fif[peft]'"])
    assert not (tmp_path / "run").exists()


def test_a_run_folder_in_use_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(dump_yaml(load_config("mini", TINY)))
    with RunLock(out):  # another process would hold it the same way (flock is per open file)
        code, err = fif_run(["--out", str(out), "--overwrite", *TINY], capsys)
        assert_one_clear_error(code, err, ["in use by another fif process", f"pid {os.getpid()}"])
        code, err = fif_run(["--resume", str(out)], capsys)
        assert_one_clear_error(code, err, ["in use"])
    assert (out / "config.yaml").is_file()


@pytest.fixture
def saved_run(tmp_path) -> Path:
    """A run folder as a killed run leaves it before its first checkpoint: config.yaml only."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(dump_yaml(load_config("mini", TINY)))
    return out


@pytest.mark.parametrize("args, must_name", [
    (["--resume", "{tmp}/nowhere"], ["nowhere", "no such run folder"]),
    (["--resume", "{tmp}"], ["no config.yaml"]),
    (["--resume", "{run}", "--preset", "mini"], ["--resume", "drop --preset"]),
    (["--resume", "{run}", "stream.tasks=3"], ["stream.tasks", "cannot change on resume", "2", "3"]),
    (["--resume", "{run}", "run.seed=1"], ["run.seed"]),
    (["--resume", "{run}", "train.lr=abc"], ["train.lr", "finite number"]),
], ids=["missing folder", "not a run folder", "with a preset", "changed stream", "changed seed", "bad override"])
def test_bad_resume_requests(args, must_name, saved_run, tmp_path, capsys):
    args = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(saved_run)) for a in args]
    code, err = fif_run(args, capsys)
    assert_one_clear_error(code, err, must_name)
    assert sorted(p.name for p in saved_run.iterdir() if p.name != RunLock.NAME) == ["config.yaml"]


def test_resuming_a_finished_run_is_refused(saved_run, capsys):
    (saved_run / "summary.json").write_text("{}")
    (saved_run / "events.jsonl").write_text(json.dumps({"event": "run_end"}) + "\n")
    code, err = fif_run(["--resume", str(saved_run)], capsys)
    assert_one_clear_error(code, err, ["already finished"])


def test_resume_overrides_warn_and_name_the_winner(saved_run, caplog):
    with caplog.at_level(logging.WARNING, logger="fif.runner.folder"):
        rc = resume_config(saved_run, ["train.lr=1e-3", "data.num_workers=2"])
    assert rc.cfg.train.lr == 1e-3 and rc.changed["train.lr"][1] == 1e-3
    lr = next(r.getMessage() for r in caplog.records if "train.lr" in r.getMessage())
    assert "command line" in lr and "using 0.001" in lr and "no longer match" in lr
    workers = next(r.getMessage() for r in caplog.records if "data.num_workers" in r.getMessage())
    assert "results are unaffected" in workers
