"""`fif study`: the paper's studies as one command each: expand a named study (or a study file) into runs,
run them here, under torchrun or as a SLURM array, and report means, intervals, paired differences and
Pareto fronts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="run one of the paper's studies (variants x seeds x lr grid) and report it",
        description="Expand a named study (methods, merging, schedules, mixtures, orderings, compute, init_deploy, models) or a "
        "study YAML file into runs (variants x tuning grid x seeds, equal budget in MAFs) under --out, a sweep folder "
        "with study.yaml beside it. --run runs them here one after another (finished runs are skipped, started ones "
        "resumed), scores each on a validation signal that is not the test scores, and writes OUT/report/study.html; "
        "--slurm writes an array script instead; --report reports what has finished. --quick: a small grid with a "
        "tiny budget, for smoke tests. Without a NAME, works on the study already in --out. docs/studies.md.",
    )
    p.add_argument("args", nargs="*", metavar="NAME|FILE section.key=value",
                   help="a named study or a study YAML file, then overrides for every run")
    p.add_argument("--preset", help="preset name or YAML file (default: the study's, else mini)")
    p.add_argument("--out", help="study folder (default: runs/study-NAME, runs/study-NAME-quick with --quick)")
    p.add_argument("--quick", action="store_true", help="the study's quick grid: fewer variants, seeds, grid points; a tiny budget")
    p.add_argument("--seeds", help="comma-separated seeds (default: the study's, 0,1,2)")
    p.add_argument("--list-studies", action="store_true", help="list the named studies and exit")
    p.add_argument("--print", action="store_true", help="print the study as YAML (a template for a study file) and exit")
    p.add_argument("--list", action="store_true", help="list the runs and their state, and exit")
    p.add_argument("--run", "--run-here", dest="run", action="store_true",
                   help="run the runs here (under torchrun write --run-here), then report")
    p.add_argument("--resume", action="store_true", help="accepted for symmetry with fif sweep: a study always resumes")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="with --run: only this run (repeatable); no report")
    p.add_argument("--report", action="store_true", help="write the report of the finished runs (partial if some are missing)")
    p.add_argument("--report-dir", help="where the report goes (default: OUT/report)")
    p.add_argument("--retry-failed", action="store_true", help="with --run: run again the runs that diverged before")
    p.add_argument("--no-progress", action="store_true", help="no progress bars inside runs")
    s = p.add_argument_group("SLURM (as fif sweep)")
    s.add_argument("--slurm", metavar="SCRIPT", help="write a SLURM array script (one array task per run)")
    s.add_argument("--gpus-per-task", type=int, default=1, help="GPUs per run (>1: torchrun, train.distributed=ddp)")
    s.add_argument("--nodes", type=int, default=1)
    s.add_argument("--cpus-per-task", type=int)
    s.add_argument("--mem")
    s.add_argument("--time", help="time limit per run, e.g. 24:00:00")
    s.add_argument("--partition")
    s.add_argument("--account")
    s.add_argument("--max-parallel", type=int, help="at most this many runs at once")
    s.add_argument("--setup", action="append", default=[], metavar="LINE", help="a shell line before each run")
    p.set_defaults(func=main, intermixed="args")  # overrides after the flags land in args too (fif.cli.main)


def fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def list_studies() -> None:
    from fif.studies import named_study, study_names

    for name in study_names():
        data = named_study(name, ["fif-mini-rn32"])
        print(f"{name:10s} {data['description']}")
        print(f"{'':10s} paper: {data['paper']}")


def print_plan(plan, out: Path) -> None:
    from fif.studies.plan import point_label

    variants = plan.variants()
    points = {v: [] for v in variants}
    for r in plan.runs:
        if point_label(r.point) not in points[r.variant]:
            points[r.variant].append(point_label(r.point))
    seeds = plan.seeds()
    plural = "s" if len(variants) != 1 else ""
    print(f"study {plan.study.name}{' (quick)' if plan.quick else ''} on {plan.preset}: {len(variants)} variant{plural}, "
          f"seeds {','.join(map(str, seeds))}, {len(plan.runs)} runs in {out}/")
    width = max(8, *(len(v) for v in variants))
    for v in variants:
        over = " ".join(plan.study.variant(v).overrides)
        print(f"  {v:{width}s} {over}  [{', '.join(points[v])}]")
    if plan.budget_mafs:
        print(f"  equal compute: every run gets {plan.budget_mafs:.4g} MAFs")


def print_estimate(plan, out: Path) -> None:
    from fif.studies.analysis import tuning_statement
    from fif.studies.estimate import estimate, format_duration

    print(f"tuning: {tuning_statement(plan)}")
    e = estimate(plan, out, _device_type(plan))
    steps = sorted(set(e.steps_per_run))
    step_text = f"{steps[0]:.0f}" if len(steps) == 1 else f"{steps[0]:.0f}-{steps[-1]:.0f}"
    if e.seconds_per_step is None:
        print(f"estimate: {e.runs_left} of {e.runs} runs to go × {step_text} full fine-tuning steps each; time per "
              "step unknown until the first run finishes")
    else:
        setup = f" + {e.seconds_per_run:.0f} s setup each" if e.seconds_per_run else ""
        print(f"estimate: {e.runs_left} of {e.runs} runs to go × {step_text} steps × {e.seconds_per_step:.2f} s/step"
              f"{setup} ≈ {format_duration(e.seconds_left)} ({e.source})")


def _device_type(plan) -> str:
    from fif.config import load_config
    from fif.core.device import resolve_device

    try:
        return resolve_device(load_config(plan.preset, plan.overrides).run.device).type
    except (ValueError, RuntimeError):
        return "cpu"


def print_runs(plan, out: Path) -> None:
    from fif.runner.sweep import run_state

    width = max(4, *(len(r.name) for r in plan.runs))
    print(f"{'run':{width}s} {'state':8s} variant / point / seed")
    for r in plan.runs:
        print(f"{r.name:{width}s} {run_state(out / r.name):8s} {r.variant} / {r.point_label} / {r.seed}")


def print_findings(analysis, report) -> None:
    print(f"\n{analysis.tuning_statement}")
    width = max(8, *(len(v.variant) for v in analysis.variants))
    print(f"{'variant':{width}s} {'point':22s} {'seeds':>5s} {'A_KA':>15s} {'A_ZS':>15s} {'GM':>15s}  (final, 95% CI)")
    for v in analysis.variants:
        p = v.chosen
        cells = []
        for m in ("a_ka", "a_zs", "gm"):
            iv = p.metrics.get("final", {}).get(m) if p else None
            cells.append("-" if iv is None else f"{iv.mean:.2f}" + (f" ±{iv.half_width:.2f}" if iv.half_width is not None else ""))
        print(f"{v.variant:{width}s} {(p.label if p else '-')[:22]:22s} {len(p.seeds) if p else 0:>5d} "
              + " ".join(f"{c:>15s}" for c in cells))
    if analysis.comparisons:
        print("findings:")
        for r in analysis.comparisons:
            print(f"  - {r.sentence}")
    missing = f" ({len(analysis.missing)} of {len(analysis.plan.runs)} runs not finished: a partial report)" if analysis.missing else ""
    for name, error in analysis.failed.items():
        print(f"diverged, left out: {name}: {error.splitlines()[0] if error else ''}")
    print(f"report: {report.html}{missing}")


def main(args: argparse.Namespace) -> int:
    from fif.cli import CliError

    names = [a for a in args.args if "=" not in a]
    args.overrides = [a for a in args.args if "=" in a]
    if len(names) > 1:
        raise CliError(f"give one study NAME or FILE, got {', '.join(names)}")
    args.study = names[0] if names else None
    if args.list_studies or (args.study is None and not args.out):
        list_studies()
        if not args.list_studies:
            print("fif study NAME [overrides] [--quick] [--run]; fif study --out DIR --run | --report | --list")
        return 0 if args.list_studies else 2
    seeds = None
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError as e:
            raise CliError(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. 0,1,2") from e
    if args.study is None:
        if args.overrides or args.preset or args.quick or seeds:
            raise CliError("--out alone works on the study already there; to change it, give the study NAME again "
                           "with a new --out")
        return existing(args, Path(args.out))
    return expand(args, seeds)


def expand(args: argparse.Namespace, seeds) -> int:
    from fif.cli import CliError
    from fif.runner.sweep import SlurmOptions, multi_gpu_overrides
    from fif.studies import expand_study, load_study, write_study
    from fif.train.distributed import is_main

    study = load_study(args.study, args.preset)
    if args.print:
        print(yaml.safe_dump(study.to_dict(), sort_keys=False, allow_unicode=True), end="")
        return 0
    opts = SlurmOptions(args.gpus_per_task, args.nodes, args.cpus_per_task, args.mem, args.time, args.partition,
                        args.account, args.max_parallel, list(args.setup))
    overrides = [*args.overrides, *(multi_gpu_overrides(opts) if args.slurm else [])]
    plan, sweep = expand_study(study, args.preset, overrides, args.quick, seeds)
    out = Path(args.out or f"runs/study-{study.name}{'-quick' if args.quick else ''}")
    if is_main() and out.is_dir() and any(out.iterdir()) and not any((out / f).is_file() for f in ("study.yaml", "sweep.yaml")):
        raise CliError(f"{out} exists and is not a study folder; choose another --out")  # the other ranks race rank 0
    write_study(plan, sweep, out)  # idempotent: under torchrun every rank writes the same files
    if is_main():
        print_plan(plan, out)
    return existing(args, out, opts)


def existing(args: argparse.Namespace, out: Path, opts=None) -> int:
    from fif.studies import read_plan
    from fif.train.distributed import is_main

    plan = read_plan(out)
    if args.list:
        print_runs(plan, out)
        return 0
    if args.slurm:
        return write_slurm(args, plan, out, opts)
    if args.run:
        return run_here(args, plan, out)
    if args.report:
        return report(args, out)
    if is_main():
        print_estimate(plan, out)
        print(f"run it here with: fif study --out {out} --run   (or --slurm SCRIPT; report with --report)")
    return 0


def write_slurm(args, plan, out: Path, opts) -> int:
    from fif.cli import CliError
    from fif.core.io import atomic_write_text
    from fif.runner.sweep import SlurmOptions, multi_gpu_overrides, read_sweep, slurm_script

    opts = opts or SlurmOptions(args.gpus_per_task, args.nodes, args.cpus_per_task, args.mem, args.time,
                                args.partition, args.account, args.max_parallel, list(args.setup))
    sweep = read_sweep(out)
    if not set(multi_gpu_overrides(opts)) <= set(sweep.overrides):
        raise CliError(f"{out} was expanded for one GPU per run; expand the study again with --gpus-per-task into a new --out")
    atomic_write_text(Path(args.slurm), slurm_script(sweep, out, opts, subcommand="study"))
    print(f"{len(sweep.runs)} runs; SLURM array script: {args.slurm} (submit with: sbatch {args.slurm}); "
          f"when they are done: fif study --out {out} --report")
    return 0


def run_here(args, plan, out: Path) -> int:
    from fif.cli.run import TablePrinter
    from fif.runner.folder import RunInterrupted
    from fif.studies import run_study
    from fif.studies.estimate import format_duration
    from fif.train.distributed import is_main

    main_rank = is_main()
    if main_rank and not args.only:
        print_estimate(plan, out)

    def on_start(name: str, action: str) -> None:
        if main_rank:
            what = {"skipped": "already finished, skipped", "ran": "starting",
                    "failed": "diverged before, skipped (--retry-failed runs it again)"}.get(action, action)
            print(f"== {name}: {what}", flush=True)

    def on_done(p) -> None:
        if main_rank:
            print(f"[{p.done}/{p.total}] {plan.study.name}: {p.name} {p.action} in {format_duration(p.seconds)}; "
                  f"about {format_duration(p.seconds_left)} left", flush=True)

    try:
        run_study(out, args.only, progress=not args.no_progress, on_start=on_start, on_done=on_done,
                  events_for=lambda name: TablePrinter(), device_type=_device_type(plan), retry_failed=args.retry_failed)
    except RunInterrupted as e:
        if main_rank:
            print(f"fif study: stopped by {e.args[0] if e.args else 'signal'}; continue with: fif study --out {out} --run",
                  file=sys.stderr)
        return 128 + e.signum
    if args.only or not main_rank:  # one run of an array (or a non-zero rank): the report comes at the end
        return 0
    return report(args, out)


def report(args, out: Path) -> int:
    from fif.studies import report_study

    analysis, written = report_study(out, args.report_dir)
    print_findings(analysis, written)
    return 0
