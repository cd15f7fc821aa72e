"""`fif sweep`: expand a grid or a sweep file into named runs; run them here, or write a SLURM array script."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="expand a grid of configs into runs; run them here or on SLURM",
        description="Expand a grid (--grid section.key=v1,v2 ..., Cartesian product) or a YAML sweep file (--file) "
        "into named runs under --out: OUT/sweep.yaml, OUT/configs/NAME.yaml (every config validated now), "
        "OUT/commands.txt (one idempotent command per run) and one run folder per run. --run runs them here one "
        "after another; --slurm writes an array script (one task per run). With --resume finished runs are "
        "skipped and started ones continued. Given only --out, works on the sweep already there. "
        "Compare the runs with: fif report OUT.",
    )
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="overrides for every run")
    p.add_argument("--out", required=True, help="sweep folder")
    p.add_argument("--preset", help="preset name or YAML file (default: the file's, else mini)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="an axis of the grid (repeatable; commas inside [..] or {..} do not split)")
    p.add_argument("--file", help="a sweep YAML file (preset, overrides, grid, runs)")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="only this run (repeatable)")
    p.add_argument("--list", action="store_true", help="list the runs and their state, and exit")
    p.add_argument("--run", "--run-here", dest="run", action="store_true",
                   help="run the runs here, one after another (under torchrun write --run-here: torchrun's own "
                   "parser takes --run for an abbreviation of its --run-path)")
    p.add_argument("--resume", action="store_true", help="with --run: skip finished runs, resume started ones")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    s = p.add_argument_group("SLURM")
    s.add_argument("--slurm", metavar="SCRIPT", help="write a SLURM array script (one array task per run)")
    s.add_argument("--gpus-per-task", type=int, default=1, help="GPUs per run (>1: torchrun, train.distributed=ddp)")
    s.add_argument("--nodes", type=int, default=1, help="nodes per run (multi-node torchrun)")
    s.add_argument("--cpus-per-task", type=int)
    s.add_argument("--mem")
    s.add_argument("--time", help="time limit per run, e.g. 24:00:00 (fif checkpoints before it)")
    s.add_argument("--partition")
    s.add_argument("--account")
    s.add_argument("--max-parallel", type=int, help="at most this many runs at once (array %%K)")
    s.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="a shell line before each run, e.g. 'source .venv/bin/activate' (repeatable)")
    p.set_defaults(func=main)


def print_runs(sweep, out) -> None:
    from fif.runner.sweep import run_state

    width = max(4, *(len(r.name) for r in sweep.runs))
    print(f"{'run':{width}s} {'state':8s} overrides")
    for r in sweep.runs:
        print(f"{r.name:{width}s} {run_state(out / r.name):8s} {' '.join(r.overrides)}")


def main(args: argparse.Namespace) -> int:

    from fif.cli import CliError
    from fif.runner.sweep import (
        SlurmOptions,
        expand,
        load_sweep_file,
        multi_gpu_overrides,
        parse_grid,
        read_sweep,
        write_sweep,
    )
    from fif.train.distributed import is_main

    out = Path(args.out)
    if args.resume and not args.run:
        raise CliError("--resume continues runs: use it with --run (the SLURM script always resumes)")
    if args.file and args.grid:
        raise CliError("give the grid either with --grid or in --file, not both")
    opts = SlurmOptions(args.gpus_per_task, args.nodes, args.cpus_per_task, args.mem, args.time, args.partition,
                        args.account, args.max_parallel, list(args.setup))
    overrides = [*args.overrides, *(multi_gpu_overrides(opts) if args.slurm else [])]
    if args.file or args.grid or args.preset or args.overrides:
        if args.file:
            sweep = load_sweep_file(args.file, args.preset, overrides)
        else:
            sweep = expand(args.preset or "mini", [parse_grid(g) for g in args.grid], overrides)
        write_sweep(sweep, out)  # idempotent and atomic: under torchrun every rank writes the same files
    else:
        sweep = read_sweep(out)
    if args.slurm:
        from fif.core.io import atomic_write_text
        from fif.runner.sweep import slurm_script

        if not set(multi_gpu_overrides(opts)) <= set(sweep.overrides):
            raise CliError(f"{out} was expanded for one GPU per run; expand it again with --gpus-per-task into a new --out")
        atomic_write_text(Path(args.slurm), slurm_script(sweep, out, opts))
        print(f"{len(sweep.runs)} runs; SLURM array script: {args.slurm} (submit with: sbatch {args.slurm})")
    if args.list or not (args.run or args.slurm):
        if is_main():
            print_runs(sweep, out)
            if not args.list:
                print(f"sweep written to {out}/ ({len(sweep.runs)} runs); run with: fif sweep --out {out} --run --resume")
        return 0
    if args.run:
        return run_here(args, out)
    return 0


def run_here(args: argparse.Namespace, out) -> int:
    from fif.cli.run import TablePrinter, fmt
    from fif.runner.folder import RunInterrupted
    from fif.runner.sweep import run_sweep
    from fif.train.distributed import is_main

    main_rank = is_main()

    def on_start(name: str, action: str) -> None:
        if main_rank:
            print(f"== {name}: {'already finished' if action == 'skipped' else action.replace('ran', 'starting')}", flush=True)

    try:
        outcomes = run_sweep(out, args.only, args.resume, on_start=on_start, events_for=lambda name: TablePrinter(),
                             progress=not args.no_progress)
    except RunInterrupted as e:
        if main_rank:
            print(f"fif sweep: stopped by {e.args[0] if e.args else 'signal'}; continue with: "
                  f"fif sweep --out {out} --run --resume")
        return 128 + e.signum
    if main_rank:
        width = max(4, *(len(o.name) for o in outcomes))
        print(f"{'run':{width}s} {'':8s} {'A_KA':>7s} {'A_ZS':>7s} {'GM':>7s}")
        for o in outcomes:
            f = o.final
            print(f"{o.name:{width}s} {o.action:8s} {fmt(f.get('a_ka')):>7s} {fmt(f.get('a_zs')):>7s} {fmt(f.get('gm')):>7s}")
        print(f"compare them with: fif report {out}")
    return 0
