"""fif.runner.sweep: grid expansion and naming, sweep files, the sweep folder, SLURM scripts, and a tiny local sweep
(2 runs) that is run, skipped and resumed."""

from __future__ import annotations

import json
import shlex

import pytest
import yaml

from fif.core.typed import ConfigError
from fif.runner.sweep import (
    SlurmOptions,
    SweepRun,
    expand,
    load_sweep_file,
    multi_gpu_overrides,
    parse_grid,
    read_sweep,
    run_state,
    run_sweep,
    slurm_script,
    split_values,
    sweep_run_folders,
    write_sweep,
)

TINY = [
    "model.pretrained=null", "budget.ft_steps=4", "stream.tasks=2", "stream.datasets=[mini_digits,mini_letters]",
    "train.batch_size=16", "train.log_every=2", "eval.min_samples=20", "eval.batch_size=128", "run.device=cpu",
    "eval.datasets=[mini_digits,mini_colors]", "eval.full_at_ends=false",
    "data.options={pool_size: 200, train_per_class: 8, test_per_class: 4, eval_size: 40, retrieval_train: 20, retrieval_test: 20}",
]


def test_split_values_respects_brackets_and_quotes():
    assert split_values("finetune, lnfit") == ["finetune", "lnfit"]
    assert split_values("[a,b],[c]") == ["[a,b]", "[c]"]
    assert split_values("{k: 1, j: 2},'x,y'") == ["{k: 1, j: 2}", "'x,y'"]
    assert parse_grid("train.lr=1e-4,5e-4") == ("train.lr", ["1e-4", "5e-4"])
    for bad in ("train.lr", "=1,2", "train.lr="):
        with pytest.raises(ConfigError, match="section.key=value1,value2"):
            parse_grid(bad)


def test_expand_is_the_cartesian_product_first_axis_slowest():
    sweep = expand("mini", [parse_grid("method.name=finetune,lnfit"), parse_grid("train.lr=1e-4,5e-4")], ["budget.ft_steps=8"])
    assert [r.name for r in sweep.runs] == [
        "method=finetune_lr=1e-4", "method=finetune_lr=5e-4", "method=lnfit_lr=1e-4", "method=lnfit_lr=5e-4"]
    assert sweep.runs[1].overrides == ["method.name=finetune", "train.lr=5e-4"]
    assert sweep.run_overrides(sweep.runs[0]) == ["budget.ft_steps=8", "method.name=finetune", "train.lr=1e-4"]
    assert expand("mini").runs == [SweepRun("run", [])]


def test_names_are_safe_unique_and_disambiguated():
    sweep = expand("mini", [("train.lr", ["1e-4"]), ("eval.lr", ["x"]), ("stream.datasets", ["[a, b]", "[a b]"])])
    assert [r.name for r in sweep.runs] == ["train.lr=1e-4_eval.lr=x_datasets=a-b", "train.lr=1e-4_eval.lr=x_datasets=a-b-2"]
    with pytest.raises(ConfigError, match="given twice"):
        expand("mini", [("train.lr", ["1"]), ("train.lr", ["2"])])


def test_sweep_file_variants_times_grid(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "preset": "mini", "overrides": ["budget.ft_steps=8"],
        "grid": {"run.seed": [0, 1], "train.lr": ["1e-4"]},
        "runs": [{"name": "lora 4", "overrides": ["method.name=lora", "method.rank=4"]}, {"name": "ft", "overrides": []}],
    }))
    sweep = load_sweep_file(path, overrides=["train.batch_size=32"])
    assert sweep.preset == "mini" and sweep.overrides == ["budget.ft_steps=8", "train.batch_size=32"]
    assert [r.name for r in sweep.runs] == ["lora-4_seed=0_lr=1e-4", "lora-4_seed=1_lr=1e-4", "ft_seed=0_lr=1e-4",
                                            "ft_seed=1_lr=1e-4"]
    assert sweep.runs[1].overrides == ["method.name=lora", "method.rank=4", "run.seed=1", "train.lr=1e-4"]
    path.write_text("grid: [1]\nbogus: 1\n")
    with pytest.raises(ConfigError) as e:
        load_sweep_file(path)
    assert "unknown key 'bogus'" in str(e.value) and "grid must map" in str(e.value)


def test_every_invalid_run_is_reported_before_anything_is_written(tmp_path):
    sweep = expand("mini", [("method.name", ["finetune", "finetuen"]), ("train.lr", ["-1", "1e-4"])])
    with pytest.raises(ConfigError) as e:
        write_sweep(sweep, tmp_path / "s")
    text = str(e.value)
    assert "method=finetuen_lr=-1: " in text and "method=finetune_lr=-1: train.lr" in text and "did you mean" in text
    assert not (tmp_path / "s").exists()


def test_sweep_folder_is_idempotent_and_refuses_another_sweep(tmp_path):
    out = tmp_path / "s"
    sweep = expand("mini", [("method.name", ["finetune", "lnfit"])], ["budget.ft_steps=8"])
    write_sweep(sweep, out, command_prefix=["fif"])
    write_sweep(sweep, out, command_prefix=["fif"])  # the same sweep again: fine
    assert read_sweep(out) == sweep
    assert (out / "configs" / "method=lnfit.yaml").is_file()
    assert "method:\n  name: lnfit" in (out / "configs" / "method=lnfit.yaml").read_text()
    lines = (out / "commands.txt").read_text().splitlines()
    assert [shlex.split(x) for x in lines] == [
        ["fif", "sweep", "--out", str(out), "--only", n, "--run-here", "--resume"] for n in ("method=finetune", "method=lnfit")]
    with pytest.raises(FileExistsError, match="different sweep"):
        write_sweep(expand("mini", [("method.name", ["bitfit"])]), out)
    assert sweep_run_folders(out) == [] and sweep_run_folders(tmp_path) is None
    assert run_state(out / "method=lnfit") == "new"


def test_slurm_script_one_gpu_per_run(tmp_path):
    sweep = expand("mini", [("method.name", ["finetune", "lnfit"])])
    script = slurm_script(sweep, tmp_path / "s", SlurmOptions(time="4:00:00", partition="gpu", max_parallel=1,
                          setup=["source .venv/bin/activate"]), python="/venv/bin/python", workdir="/work")
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for flag in ("--array=0-1%1", "--nodes=1", "--gpus-per-node=1", "--time=4:00:00", "--partition=gpu",
                 "--signal=TERM@120", f"--output={tmp_path}/s/slurm-%A_%a.out"):
        assert f"#SBATCH {flag}" in lines
    assert lines.index("cd /work") < lines.index("source .venv/bin/activate")
    assert "NAMES=(method=finetune method=lnfit)" in lines
    assert lines[-1] == (f'srun /venv/bin/python -m fif sweep --out {tmp_path}/s --only "$NAME" --run-here --resume --no-progress')
    assert "torch.distributed.run" not in script and multi_gpu_overrides(SlurmOptions()) == []


def test_slurm_script_multi_gpu_and_multi_node(tmp_path):
    sweep = expand("mini", [("method.name", ["finetune"])])
    opts = SlurmOptions(gpus_per_task=8)
    assert multi_gpu_overrides(opts) == ["train.distributed=ddp"]
    one_node = slurm_script(sweep, tmp_path, opts, python="py")
    assert "py -m torch.distributed.run --standalone --nproc_per_node=8 -m fif sweep" in one_node
    two_nodes = slurm_script(sweep, tmp_path, SlurmOptions(gpus_per_task=8, nodes=2), python="py")
    assert "#SBATCH --nodes=2" in two_nodes and "MASTER_ADDR=" in two_nodes
    assert "--nnodes=2 --rdzv_backend=c10d --rdzv_id=$SLURM_JOB_ID --rdzv_endpoint=$MASTER_ADDR:29500" in two_nodes
    with pytest.raises(ValueError, match="must be >= 1"):
        slurm_script(sweep, tmp_path, SlurmOptions(gpus_per_task=0))


@pytest.mark.slow  # three tiny runs and a resume: ~30 s on an idle 2-core machine
def test_tiny_local_sweep_runs_skips_and_resumes(tmp_path):
    out = tmp_path / "sweep"
    write_sweep(expand("mini", [("method.name", ["finetune", "lnfit"])], TINY), out)
    started = []
    first = run_sweep(out, only=["method=lnfit"], on_start=lambda n, a: started.append((n, a)))
    assert [(o.name, o.action) for o in first] == [("method=lnfit", "ran")] and started == [("method=lnfit", "ran")]
    assert run_state(out / "method=lnfit") == "finished"
    with pytest.raises(FileExistsError, match="--resume"):  # without resume an existing run folder is refused
        run_sweep(out, only=["method=lnfit"])
    summary = json.loads((out / "method=lnfit" / "summary.json").read_text())
    (out / "method=lnfit" / "summary.json").unlink()  # as if stopped after its last checkpoint
    assert run_state(out / "method=lnfit") == "started"
    events = []
    outcomes = run_sweep(out, resume=True, events_for=lambda name: events.append(name) or None)
    assert [(o.name, o.action) for o in outcomes] == [("method=finetune", "ran"), ("method=lnfit", "resumed")]
    assert events == ["method=finetune", "method=lnfit"]
    assert outcomes[1].final == summary["final"]
    again = run_sweep(out, resume=True)
    assert [o.action for o in again] == ["skipped", "skipped"] and again[0].final == outcomes[0].final
    assert sweep_run_folders(out) == [out / "method=finetune", out / "method=lnfit"]
    for name in ("method=finetune", "method=lnfit"):
        assert yaml.safe_load((out / name / "config.yaml").read_text())["method"]["name"] == name.split("=")[1]
