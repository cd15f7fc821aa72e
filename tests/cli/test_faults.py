"""The fault catalogue beyond bad config values (tests/cli/test_bad_inputs.py): every command, the run folder's
own faults (disk full, read-only, an edited config.yaml, a kill during setup), diverged weights and damaged
files. Each case asserts the exit code, one `fif <command>: error: ...` line that names the file or key and
the fix (no traceback), and that nothing was lost."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import fif.core.io as fio
from fif.cli import main
from fif.config import dump_yaml, load_config
from fif.core.io import safetensors_bytes
from fif.runner.checkpoint import CHECKPOINT_DIR, Position, list_checkpoints, save_checkpoint

TINY = [
    "model.pretrained=null", "train.batch_size=8", "eval.min_samples=10", "run.threads=1", "stream.tasks=2",
    "budget.ft_steps=16",
    ("data.options={pool_size: 200, train_per_class: 6, test_per_class: 3, eval_size: 30, retrieval_train: 30, "
     "retrieval_test: 10}"),
    "stream.datasets=[mini_digits,mini_letters]", "eval.datasets=[mini_digits,mini_colors]",
]
EVAL = ["eval.min_samples=10", "eval.batch_size=64", "run.device=cpu", "--datasets", "mini_digits", "--subset"]
FIXTURE = Path(__file__).parent.parent / "fixtures" / "run_small"


@pytest.fixture(autouse=True)
def _threads():
    """run.threads=1 sets torch's threads for the whole process: put them back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def fif(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_clear_error(code: int, err: str, command: str, must_name: list[str]) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fif {command}: error: ") and "Traceback" not in err, err
    for text in must_name:
        assert text in err, f"{text!r} not in: {err}"


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes (what "nothing was lost or changed" compares), but the run
    lock, which a refused command may leave (empty of holders: the kernel dropped it)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
            and p.name != ".lock"}


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """``path`` made read-only: chmod for a user, the immutable attribute for root (who ignores modes)."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True,
                                                        check=False).returncode:
        pytest.skip("running as root on a file system without chattr +i: no way to make a folder read-only")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.fixture
def readonly(tmp_path):
    """A read-only folder holding one file of the user's."""
    d = tmp_path / "ro"
    d.mkdir()
    (d / "kept.txt").write_text("kept")
    with read_only(d):
        yield d


def tiny_model_weights(tmp_path: Path, nan: bool = False) -> Path:
    from fif.model.clip import build_clip

    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in build_clip("fif-mini-rn32").model.state_dict().items()}
    if nan:
        state["visual.conv1.weight"][0, 0, 0, 0] = float("nan")
        state["token_embedding.weight"][1, :3] = float("inf")
    path = tmp_path / ("nan.safetensors" if nan else "ok.safetensors")
    save_file(state, str(path), metadata={"arch": "fif-mini-rn32"})
    return path


# ----------------------------------------------------------------------------------------------
# A diverged run never exits 0 with broken weights


def test_a_diverging_run_stops_and_ships_nothing_broken(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = fif(["run", "--no-progress", "--out", str(out), *TINY, "train.lr=1e10", "guard.max_rollbacks=1"],
                       capsys)
    one_clear_error(code, err, "run", ["non-finite weights", "after 1 rollbacks", "Lower train.lr",
                                       f"fif run --resume {out} train.lr="])
    assert not (out / "final.safetensors").exists() and not (out / "summary.json").exists()
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [e["reason"] for e in events if e["event"] == "rollback"] == ["weights"]
    kept = list_checkpoints(out / CHECKPOINT_DIR)
    assert kept, "the rollback target must survive"
    for _, path in kept:  # every checkpoint written is finite: a rollback target is never a diverged model
        assert all(torch.isfinite(v).all() for v in load_file(str(path / "model.safetensors")).values()
                   if v.is_floating_point())


def test_eval_refuses_nonfinite_weights_unless_allowed(tmp_path, capsys):
    nan = tiny_model_weights(tmp_path, nan=True)
    code, out, err = fif(["eval", str(nan), *EVAL], capsys)
    one_clear_error(code, err, "eval", [str(nan), "NaN/inf values in 2 tensors", "visual.conv1.weight",
                                        "--allow-nonfinite"])
    assert out == ""
    code, out, _ = fif(["eval", str(nan), *EVAL, "--allow-nonfinite", "--json"], capsys)
    assert code == 0 and json.loads(out)["datasets"][0]["dataset"] == "mini_digits"


@pytest.fixture
def merge_inputs(tmp_path) -> Path:
    for name, value in (("a", 1.0), ("b", 3.0)):
        (tmp_path / f"{name}.safetensors").write_bytes(safetensors_bytes({"w": torch.full((4,), value)}))
    (tmp_path / "nan.safetensors").write_bytes(safetensors_bytes({"w": torch.tensor([1.0, float("nan"), 2.0, 3.0])}))
    return tmp_path


@pytest.mark.parametrize("args, must_name", [
    (["{d}/a.safetensors", "{d}/b.safetensors", "--weights", "inf,1"], ["--weights 'inf,1'", "finite number"]),
    (["{d}/a.safetensors", "{d}/nan.safetensors"], ["1 NaN/inf values in 1 tensors (w: 1)", "nan.safetensors",
                                                    "--allow-nonfinite", "nothing was written"]),
], ids=["infinite weight", "nan input"])
def test_merge_refuses_to_write_nonfinite_weights(args, must_name, merge_inputs, capsys):
    out = merge_inputs / "m.safetensors"
    argv = ["merge", *[a.replace("{d}", str(merge_inputs)) for a in args], "-o", str(out)]
    code, _, err = fif(argv, capsys)
    one_clear_error(code, err, "merge", must_name)
    assert not out.exists()
    if "nan" in args[1]:
        assert fif([*argv, "--allow-nonfinite"], capsys)[0] == 0 and out.is_file()


# ----------------------------------------------------------------------------------------------
# The run folder's faults


class FullDisk(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def fill_disk_at(monkeypatch, marker: str) -> None:
    """Every write by fif.core.io to a path containing ``marker`` fails as on a full disk (write(2): ENOSPC)."""
    real = open

    def full_open(path, mode="r", *args, **kwargs):
        if marker in str(path) and ("w" in mode or "a" in mode):
            return io.BufferedWriter(FullDisk())
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(fio, "open", full_open, raising=False)


def test_disk_full_names_the_file_and_keeps_the_checkpoints(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    fill_disk_at(monkeypatch, "task0000-step0000004")  # the second checkpoint inside the first task
    code, _, err = fif(["run", "--no-progress", "--out", str(out), *TINY, "checkpoint.every_steps=2"], capsys)
    one_clear_error(code, err, "run", ["No space left on device", f"cannot write {out}/checkpoints/task0000-step0000004",
                                       "its newest checkpoint, task0000-step0000002, is intact",
                                       "a checkpoint needs about", f"fif run --resume {out}"])
    assert [p.name for _, p in list_checkpoints(out / CHECKPOINT_DIR)][-1] == "task0000-step0000002"
    assert not [p for p in (out / CHECKPOINT_DIR).iterdir() if p.name.startswith(".tmp-")]
    assert {"config.yaml", "run.json", "events.jsonl"} <= {p.name for p in out.iterdir()}


@pytest.mark.slow
def test_a_run_stopped_by_a_full_disk_resumes_to_the_uninterrupted_result(tmp_path, capsys, monkeypatch):
    from fif.runner.folder import without_timing

    ref, out = tmp_path / "ref", tmp_path / "run"
    assert fif(["run", "--no-progress", "--out", str(ref), *TINY], capsys)[0] == 0
    with monkeypatch.context() as m:
        fill_disk_at(m, "task0001-start")
        assert fif(["run", "--no-progress", "--out", str(out), *TINY], capsys)[0] == 2
    code, stdout, err = fif(["run", "--no-progress", "--resume", str(out)], capsys)  # space freed
    assert code == 0 and "final: A_KA" in stdout, err
    for name in ("summary.json", "final.safetensors"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    events = [[without_timing(json.loads(line)) for line in (d / "events.jsonl").read_text().splitlines()]
              for d in (ref, out)]
    assert events[0] == events[1]


def test_a_read_only_folder_is_named_with_the_fix(readonly, capsys):
    code, _, err = fif(["run", "--no-progress", "--out", str(readonly / "run"), *TINY], capsys)
    one_clear_error(code, err, "run", [str(readonly / "run"), "choose a writable --out"])
    assert sorted(p.name for p in readonly.iterdir()) == ["kept.txt"]


@pytest.fixture
def run_folder(tmp_path) -> Path:
    """A run folder with a checkpoint at task 1's start, made as a run makes it (config in the manifest)."""
    out = tmp_path / "run"
    cfg = load_config("mini", TINY)
    out.mkdir()
    (out / "config.yaml").write_text(dump_yaml(cfg))
    (out / "run.json").write_text(json.dumps({"fif_version": "0.1.0", "seed": 0}))
    (out / "events.jsonl").write_text('{"event": "run_start"}\n')
    meta = {"seed": 0, "method": "finetune", "arch": cfg.model.arch, "tasks": 2, "config": cfg.to_dict()}
    save_checkpoint(out / CHECKPOINT_DIR, Position(1), {"w": torch.ones(2)}, {"x": 1}, meta)
    return out


@pytest.mark.parametrize("edit, must_name", [
    (("run:\n  seed: 0", "run:\n  seed: 7"), ["run.seed: config.yaml has 7", "made with 0", "run.seed: 0 back"]),
    (("tasks: 2", "tasks: 3"), ["stream.tasks: config.yaml has 3", "made with 2"]),
], ids=["seed", "stream"])
def test_resume_trusts_the_checkpoint_not_an_edited_config(edit, must_name, run_folder, capsys):
    text = (run_folder / "config.yaml").read_text()
    assert edit[0] in text
    (run_folder / "config.yaml").write_text(text.replace(edit[0], edit[1], 1))
    before = tree(run_folder)
    code, _, err = fif(["run", "--no-progress", "--resume", str(run_folder)], capsys)
    one_clear_error(code, err, "run", ["task0001-start", "cannot change on resume", *must_name])
    assert tree(run_folder) == before  # nothing quarantined, rewritten or recorded


def test_a_read_only_run_folder_cannot_be_resumed_and_says_why(run_folder, capsys):
    before = tree(run_folder)
    with read_only(run_folder):
        code, _, err = fif(["run", "--no-progress", "--resume", str(run_folder)], capsys)
    one_clear_error(code, err, "run", [str(run_folder), "make the folder writable"])
    assert tree(run_folder) == before


def killed_in_setup(argv: list[str]) -> None:
    """Run ``fif`` in a child process that SIGKILLs itself when setup starts (the OOM killer, a node lost)."""
    pid = os.fork()
    if pid == 0:
        try:
            from fif.runner import stream

            stream.setup = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
            main(argv)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_a_kill_during_setup_leaves_a_folder_fif_runs_again_or_resumes(tmp_path):
    from fif.runner.folder import resume_config
    from fif.runner.setup import is_run_folder, never_started, prepare_out_dir
    from fif.runner.stream import pick_checkpoint

    out = tmp_path / "run"
    killed_in_setup(["run", "--no-progress", "--out", str(out), *TINY])
    assert is_run_folder(out) and never_started(out)
    assert resume_config(out).cfg == load_config("mini", TINY)  # --resume: the config is there ...
    assert pick_checkpoint(out) is None  # ... and no checkpoint: it starts over in the folder
    prepare_out_dir(out, overwrite=False).release()  # the same command again: no --overwrite needed


@pytest.mark.slow
@pytest.mark.parametrize("again", ["same command", "resume"])
def test_after_a_kill_during_setup_both_ways_finish_the_run(again, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--no-progress", "--out", str(out), *TINY]
    killed_in_setup(argv)
    code, stdout, err = fif(argv if again == "same command" else ["run", "--no-progress", "--resume", str(out)], capsys)
    assert code == 0 and "final: A_KA" in stdout, err
    assert json.loads((out / "run.json").read_text())["tasks"]


def test_a_corrupt_cached_base_model_says_delete_it_or_rebuild_it(tmp_path, capsys):
    from fif.train.pretrain import PretrainSpec, base_model_path

    cfg = load_config("mini", [*TINY, f"run.cache_dir={tmp_path / 'cache'}"])
    cached = base_model_path(cfg.run.cache_dir, PretrainSpec(cfg.model.arch, cfg.data.benchmark), cfg.data.options)
    cached.parent.mkdir(parents=True)
    out = tmp_path / "run"
    argv = ["run", "--no-progress", "--out", str(out), *TINY, "model.pretrained=mini-base",
            f"run.cache_dir={tmp_path / 'cache'}"]
    cached.write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{torn")  # a copy cut short
    code, _, err = fif(argv, capsys)
    one_clear_error(code, err, "run", [str(cached), "delete it", "fif pretrain --force"])
    cached.write_bytes(tiny_model_weights(tmp_path, nan=True).read_bytes())  # readable, but NaN
    code, _, err = fif(argv, capsys)
    one_clear_error(code, err, "run", ["NaN/inf", "delete it or run fif pretrain --force"])
    assert not out.exists()


# ----------------------------------------------------------------------------------------------
# Every other command


@pytest.fixture
def report_runs(tmp_path) -> Path:
    for name in ("garbage", "null_score"):
        shutil.copytree(FIXTURE, tmp_path / name)
    lines = (tmp_path / "garbage" / "events.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "garbage" / "events.jsonl").write_bytes(b"".join(lines[:3]) + b"\xff\xfe\x00garbage\n" + b"".join(lines[3:]))
    events = [json.loads(line) for line in (tmp_path / "null_score" / "events.jsonl").read_text().splitlines()]
    first_eval = next(e for e in events if e["event"] == "eval")
    first_eval["scores"][next(iter(first_eval["scores"]))] = None
    (tmp_path / "null_score" / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return tmp_path


@pytest.mark.parametrize("argv, must_name", [
    (["report", "{d}/garbage"], ["garbage/events.jsonl:4", "corrupt event line", "restore it"]),
    (["report", "{d}/null_score"], ["null_score/events.jsonl", "score None", "is not a number", "restore it"]),
    (["report", "{d}/nowhere"], ["nowhere", "give fif run folders"]),
], ids=["garbage bytes", "null score", "no run"])
def test_report_faults(argv, must_name, report_runs, capsys):
    before = tree(report_runs)
    code, _, err = fif([a.replace("{d}", str(report_runs)) for a in argv], capsys)
    one_clear_error(code, err, "report", must_name)
    assert tree(report_runs) == before  # no report written over or beside a damaged run


@pytest.mark.parametrize("command, argv, must_name", [
    ("budget", ["budget", "--device", "gpu"], ["'gpu' is not a device", "cuda:N"]),
    ("budget", ["budget", "--tasks", "abc"], ["--tasks", "20,50"]),
    ("budget", ["budget", "--methods", "finetun"], ["did you mean 'finetune'"]),
    ("stream", ["stream", "build", "--out", "{d}/s.json", "stream.ordering=nope"], ["stream.ordering", "dataset"]),
    ("stream", ["stream", "show", "{d}/missing.json"], ["missing.json", "does not exist"]),
    ("stream", ["stream", "build", "--out", "{d}/s.json", "--preset", "{d}/empty.yaml"], ["empty.yaml", "empty",
                                                                                         "--print-config"]),
    ("sweep", ["sweep", "--out", "{d}/nowhere"], ["not a sweep folder", "--grid"]),
    ("sweep", ["sweep", "--out", "{d}/sw", "--resume"], ["--resume", "--run"]),
    ("sweep", ["sweep", "--out", "{d}/sw", "--grid", "train.eps=0,1e-8"], ["train.eps", "> 0"]),
    ("data", ["data", "show", "nope"], ["unknown benchmark 'nope'", "Valid: "]),
    ("data", ["data", "show", "mini", "image_size=abc"], ["image_size", "integer"]),
    ("eval", ["eval", "{d}/missing.safetensors"], ["missing.safetensors", "neither a run folder nor a weights file"]),
    ("merge", ["merge", "{d}/missing.safetensors", "-o", "{d}/m.safetensors"], ["missing.safetensors", "does not exist"]),
], ids=lambda x: x if isinstance(x, str) else None)
def test_every_command_fails_with_one_clear_line(command, argv, must_name, tmp_path, capsys):
    (tmp_path / "empty.yaml").write_text("")
    before = tree(tmp_path)
    code, _, err = fif([a.replace("{d}", str(tmp_path)) for a in argv], capsys)
    one_clear_error(code, err, command, must_name)
    assert tree(tmp_path) == before and not (tmp_path / "sw").exists()


def test_data_materialize_into_a_read_only_folder(readonly, capsys):
    code, _, err = fif(["data", "materialize", "mini", str(readonly / "out"), "pool_size=50", "--datasets",
                        "mini_colors", "--splits", "test"], capsys)
    one_clear_error(code, err, "data", [str(readonly / "out"), "choose a writable"])
    assert sorted(p.name for p in readonly.iterdir()) == ["kept.txt"]
